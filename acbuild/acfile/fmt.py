"""Format (before render): rewrite an Acfile's text in the canonical style, same meaning.

Upper-case keywords, one space between words, options in a fixed order, continuation lines
indented four spaces, one blank line at most. Template text is left exactly as written: any
line that touches a jinja2 tag (``{{ }}``, ``{% %}``, ``{# #}``) — and the whole logical
line it belongs to — is kept byte for byte, because its words are not known until rendered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from acbuild.acfile.instructions import KEYWORDS

_CONTINUATION = re.compile(r"\\[ \t]*$")  # as in parse.py
_WORD = re.compile(r"""(?:[^\s'"\\]|\\[\s\S]?|'[^']*'|"(?:[^"\\]|\\[\s\S])*")+""")
_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|\{[{%#].*", re.DOTALL)
_INDENT = "    "
_KEYWORDS = frozenset(KEYWORDS.values())

# Canonical option order; options an instruction reads only before its first positional
# (COPY, RUN) stay in front, the others (PORT, MOUNT, DEPENDENCY) go after the positionals.
_LEADING = {"COPY": ("from", "chown", "mode"),
            "RUN": ("network", "env", "workdir", "user", "timeout", "pids", "memory",
                    "mount")}
_TRAILING = {"PORT": ("count", "socket-activated"), "MOUNT": ("read-only",),
             "DEPENDENCY": ("image-id", "label", "size")}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Physical:
    text: str
    templated: bool


def format_text(text: str) -> str:
    """The canonical form of an Acfile's source text (before rendering)."""
    lines = _physical_lines(text)
    out: list[tuple[str, bool]] = []
    for group in _logical_groups(lines):
        kept = any(line.templated for line in group)
        out.extend((text, kept) for text in _format_group(group))
    return _tidy_blank_lines(out)


def _physical_lines(text: str) -> list[_Physical]:
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    touched = _templated_lines(text)
    return [_Physical(text=line, templated=i in touched) for i, line in enumerate(raw)]


def _templated_lines(text: str) -> set[int]:
    """0-based numbers of the lines any template tag touches (tags may span lines)."""
    touched: set[int] = set()
    for m in _TAG.finditer(text):
        first = text.count("\n", 0, m.start())
        touched.update(range(first, first + m.group().count("\n") + 1))
    return touched


def _logical_groups(lines: Sequence[_Physical]) -> Iterator[list[_Physical]]:
    """Lines grouped as the parser joins them: a line ending in a backslash continues,
    and blank or comment lines inside a continuation belong to it."""
    group: list[_Physical] = []
    for line in lines:
        group.append(line)
        stripped = line.text.strip()
        if not stripped or stripped.startswith("#"):
            if len(group) > 1:
                continue  # the parser skips it and the continuation goes on
        elif _CONTINUATION.search(line.text):
            continue
        yield group
        group = []
    if group:
        yield group


def _format_group(group: list[_Physical]) -> list[str]:
    if any(line.templated for line in group):
        return [line.text for line in group]
    if len(group) == 1:
        stripped = group[0].text.strip()
        if not stripped or stripped.startswith("#"):
            return [stripped]
        words = _words(stripped)
        return [" ".join(_canonical(words))] if words is not None else [group[0].text.rstrip()]
    return _format_continued(group)


def _format_continued(group: list[_Physical]) -> list[str]:
    """Keep the user's line breaks (and any comments between them); normalise each piece."""
    pieces: list[tuple[_Physical, str | None]] = []
    for line in group:
        stripped = line.text.strip()
        if not stripped or stripped.startswith("#"):
            pieces.append((line, None))
            continue
        m = _CONTINUATION.search(line.text)
        body = (line.text[: m.start()] if m else line.text).strip()
        pieces.append((line, body))
    bodies = [b for _, b in pieces if b]
    per_line = [_words(b) for b in bodies]
    # A quoted word split over lines cannot be cut into per-line words: keep as written.
    if any(w is None for w in per_line) or _words(" ".join(bodies)) != [
        w for ws in per_line for w in ws or []
    ]:
        return [line.text.rstrip() for line in group]
    out: list[str] = []
    first = True
    last = max(i for i, (_, b) in enumerate(pieces) if b)
    index = 0
    for i, (line, piece) in enumerate(pieces):
        if piece is None:
            out.append(line.text.strip() and _INDENT + line.text.strip())
            continue
        if not piece:
            continue  # a lone backslash continues nothing new
        words = per_line[index] or []
        index += 1
        if first:
            # Leading options are reordered when they all sit on this first line.
            words = _canonical(words, reorder=words[0].upper() in _LEADING and any(
                not w.startswith("--") or w == "--" for w in words[1:]))
        text = (" ".join(words) if first else _INDENT + " ".join(words))
        first = False
        out.append(text if i == last else text + " \\")
    return out


def _words(text: str) -> list[str] | None:
    """The words of a line as written, or None when the line cannot be split (it would not
    parse either, so formatting leaves it for the parser to report)."""
    words, pos = [], 0
    for m in _WORD.finditer(text):
        if text[pos : m.start()].strip():
            return None
        words.append(m.group())
        pos = m.end()
    return words if not text[pos:].strip() else None


def _canonical(words: list[str], *, reorder: bool = True) -> list[str]:
    keyword = words[0].upper()
    if keyword not in _KEYWORDS:
        return words
    args = words[1:]
    if keyword == "BEGIN" and len(args) >= 2 and args[1].upper() == "AS":
        args = [args[0], "AS", *args[2:]]
    if reorder and keyword in _LEADING:
        args = _leading_options(args, _LEADING[keyword])
    elif reorder and keyword in _TRAILING:
        args = _trailing_options(args, _TRAILING[keyword])
    return [keyword, *args]


def _option_rank(word: str, order: Sequence[str]) -> int:
    name = word[2:].partition("=")[0]
    return order.index(name) if name in order else len(order)


def _leading_options(args: list[str], order: Sequence[str]) -> list[str]:
    n = 0
    while n < len(args) and args[n].startswith("--") and args[n] != "--":
        n += 1
    options = sorted(args[:n], key=lambda w: _option_rank(w, order))  # stable: --env order kept
    return [*options, *args[n:]]


def _trailing_options(args: list[str], order: Sequence[str]) -> list[str]:
    end = args.index("--") if "--" in args else len(args)
    head = args[:end]
    options = [w for w in head if w.startswith("--")]
    positionals = [w for w in head if not w.startswith("--")]
    options.sort(key=lambda w: _option_rank(w, order))
    return [*positionals, *options, *args[end:]]


def _tidy_blank_lines(lines: Sequence[tuple[str, bool]]) -> str:
    """At most one blank line in a row, none at the ends; template text is not touched."""
    out: list[str] = []
    for line, kept in lines:
        if line == "" and not kept and (not out or out[-1] == ""):
            continue
        out.append(line)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n" if out else ""
