"""acbuild.terminal: one escaping function for everything that reaches a terminal."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acbuild.errors import AcfileError, Span
from acbuild.terminal import escape, escape_lines, json_dumps, tty_line

OSC8 = "\x1b]8;;https://evil.example/\x07click me\x1b]8;;\x07"


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text, ünïcode, 漢字", "plain text, ünïcode, 漢字"),
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    (OSC8, "\\x1b]8;;https://evil.example/\\x07click me\\x1b]8;;\\x07"),
    ("\x9b31m C1 CSI", "\\x9b31m C1 CSI"),
    ("del\x7f nul\x00 bel\x07", "del\\x7f nul\\x00 bel\\x07"),
    ("a\tb\nc\rd", "a\\tb\\nc\\rd"),
    ("bidi \u202egnp.exe", "bidi \\u202egnp.exe"),
    ("line\u2028sep", "line\\u2028sep"),
    ("lone \udcff surrogate", "lone \\udcff surrogate"),
    ("tag \U000e0041", "tag \\U000e0041"),
])
def test_escape_is_python_style(raw: str, shown: str) -> None:
    assert escape(raw) == shown


@given(st.text())
def test_escaped_text_is_printable_and_encodable(text: str) -> None:
    shown = escape(text)
    assert shown.isprintable()
    shown.encode("utf-8")


@given(st.text())
def test_json_dumps_is_printable_valid_json_of_the_same_value(text: str) -> None:
    out = json_dumps({"k": text, text: [text]}, indent=2)
    assert escape_lines(out) == out  # nothing left to escape but the layout's newlines
    assert json.loads(out) == {"k": text, text: [text]}


def test_escape_lines_keeps_newlines_only() -> None:
    assert escape_lines("one\x1b[1m\ntwo") == "one\\x1b[1m\ntwo"


@pytest.mark.parametrize(("raw", "shown"), [
    ("10%\r50%\r100%", "100%"),
    ("downloading\rdone", "doneloading"),  # a terminal overwrites, it does not clear
    ("abc\b\bX", "aXc"),
    ("a\tb", "a       b"),
    ("\x1b]0;title\x07ok", "\\x1b]0;title\\x07ok"),
    ("x\b\b\b\by", "y"),
])
def test_tty_line_is_the_lines_latest_state(raw: str, shown: str) -> None:
    assert tty_line(raw) == shown


def test_error_messages_escape_what_they_quote_and_keep_the_caret_under_it() -> None:
    span = Span(file="Acfile\x1b[8m", line=2, column=7, length=3,
                source_line="LABEL \x1b[31m=x")
    text = AcfileError("bad name 'x\x1b]52;c;aGk=\x07'", span=span, hint="try\x9bthis").render()
    assert "\x1b" not in text and "\x9b" not in text
    head, source, carets, hint = text.split("\n")
    assert head == "Acfile\\x1b[8m:2:7: error: bad name 'x\\x1b]52;c;aGk=\\x07'"
    assert source == "    LABEL \\x1b[31m=x"
    assert carets == "          ^^^^^^"  # under "\x1b[3", escaped
    assert hint == "    hint: try\\x9bthis"


def test_to_ascii_keeps_ascii_draws_glyphs_and_escapes_the_rest() -> None:
    from acbuild.terminal import to_ascii

    assert to_ascii("plain [1/2] text") == "plain [1/2] text"
    assert to_ascii("version=\u2026 lines \u2501\u2501 \u251c\u2500\u2500 a \u2192 b") == \
        "version=... lines -- |-- a -> b"
    assert to_ascii("caf\u00e9 \u6f22 \U0001f600") == "caf\\xe9 \\u6f22 \\U0001f600"
