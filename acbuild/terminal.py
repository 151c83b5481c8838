"""Terminal safety: text from images, manifests, Acfiles and RUN output shown without effect.

An image can name a file ``\\x1b]52;c;…\\x07`` (set the clipboard), a manifest label can hold
CSI sequences that rewrite the screen, a RUN step can print an OSC 8 hyperlink that hides its
target. Whatever a user did not write is escaped Python-style (``\\x1b``, ``\\u202e``) before it
is printed: every character ``str.isprintable`` refuses — C0, DEL, C1, bidi overrides, line
separators, lone surrogates (which would also make the write itself fail). The lowest layer, so
that errors, reports, the image layer and the CLI all use this one function.
"""

from __future__ import annotations

import json
import re

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` as one line with every non-printable character escaped Python-style."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def escape_lines(text: str) -> str:
    """Like ``escape`` but keeping the newlines that separate lines of a message."""
    return "\n".join(escape(line) for line in text.split("\n"))


def tty_line(raw: str, *, tab: int = 8) -> str:
    """A RUN output line as a terminal would leave it: ``\\r`` returns to the start of the line
    and the text after it overwrites, ``\\b`` steps back one column, tabs are expanded; what
    remains non-printable is escaped."""
    if raw.isprintable():
        return raw
    cells: list[str] = []
    column = 0
    for ch in raw:
        if ch == "\r":
            column = 0
        elif ch == "\b":
            column = max(column - 1, 0)
        elif ch == "\t":
            stop = (column // tab + 1) * tab
            while column < stop:
                column = _put(cells, column, " ")
        else:
            column = _put(cells, column, ch if ch.isprintable() else _escape_char(ch))
    return "".join(cells)


def _put(cells: list[str], column: int, cell: str) -> int:
    if column < len(cells):
        cells[column] = cell
    else:
        cells.append(cell)
    return column + 1


# What the program itself draws, in the ASCII a terminal without UTF-8 shows.
_ASCII_GLYPHS = str.maketrans({
    "\u2026": "...", "\u2014": "-", "\u2013": "-", "\u2192": "->", "\u2018": "'",
    "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00d7": "x", "\u2501": "-",
    "\u2578": "-", "\u257a": "-", "\u2500": "-", "\u2502": "|", "\u251c": "|",
    "\u2514": "`",
})


def to_ascii(text: str) -> str:
    """``text`` for a terminal that shows ASCII only: the program's own glyphs (``…``, bars,
    tree lines) as ASCII look-alikes, any other character beyond ASCII escaped Python-style
    (``\\xe9``), so nothing is lost and nothing shows as mojibake."""
    if text.isascii():
        return text
    text = text.translate(_ASCII_GLYPHS)
    return "".join(ch if ch.isascii() else _escape_char(ch) for ch in text)


# json.dumps escapes C0 but, with ensure_ascii=False, leaves DEL, C1, bidi controls and lone
# surrogates as they are; \u escapes keep the JSON valid and mean the same string.
_UNSAFE_IN_JSON = re.compile(r"[^\x00-\x7e]")


def _json_escape(found: re.Match[str]) -> str:
    ch = found[0]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_dumps(value: object, **options: object) -> str:
    """``json.dumps`` (non-ASCII kept readable) that is safe to print: structural characters
    are ASCII, so escaping every non-printable character only touches strings."""
    text = json.dumps(value, ensure_ascii=False, **options)  # type: ignore[arg-type]
    return _UNSAFE_IN_JSON.sub(_json_escape, text)
