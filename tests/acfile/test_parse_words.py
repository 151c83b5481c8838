"""A NUL or control character in an Acfile word or a variable is a placed one-line error,
not an `embedded null byte` ValueError (exit 70) nor a NUL written into the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.acfile.parse import parse_text
from acbuild.acfile.render import load_variables
from acbuild.errors import AcbuildError, AcfileError
from tests.support.cli import acbuild

WORDS = [
    "COPY f\x00 /f", "COPY f /f\x00", 'COPY ["f\\u0000", "/x"]', 'COPY ["f\\u001b", "/x"]',
    "BEGIN ./f\x00", "LABEL version=a\x00", "LABEL version=a\x1b[31m", "ENV A=b\x00",
    "ENV A=b\x9b", "WORKDIR /a\x00", "USER a\x7f", "ANNOTATION a=b\x00", "MOUNT a /m\x00",
    "SIGN a\x00", "PORT a\x00 tcp 80", "PATH-WHITELIST /a\x01", 'EXEC ["/a\\u0000"]',
    'RUN ["/bin/echo", "a\\u0000"]', "RUN echo \x00", "NAME example.com/\x1bx",
]


@pytest.mark.parametrize("line", WORDS)
def test_control_characters_in_words_are_placed_errors(line: str) -> None:
    text = f"BEGIN scratch\nNAME example.com/x\n{line}\n"
    with pytest.raises(AcbuildError) as caught:
        parse_text(text)
    errors = getattr(caught.value, "errors", (caught.value,))
    assert any("control character" in e.message and e.span is not None and e.span.line == 3
               for e in errors), [e.render() for e in errors]


def test_commands_may_pass_escapes_to_their_program() -> None:
    (*_, run) = parse_text('BEGIN scratch\nNAME example.com/x\nRUN ["printf", "\\u001b[1m"]\n')
    assert run.argv == ("printf", "\x1b[1m")  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["a\\u0000b", "\\u001b]0;x\\u0007", "\\u009b"])
def test_control_characters_in_a_var_file_value_are_refused(tmp_path: Path, value: str) -> None:
    var_file = tmp_path / "vars.toml"
    var_file.write_text(f'v = "{value}"\n')
    with pytest.raises(AcfileError, match="variable 'v' holds the control character"):
        load_variables([], [var_file])


def test_newlines_and_tabs_in_a_value_are_text() -> None:
    assert load_variables(["v=a\tb\nc"], []) == {"v": "a\tb\nc"}


def test_nul_from_a_var_file_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "vars.toml").write_text('dest = "/a\\u0000b"\n')
    (tmp_path / "f").write_text("x")
    (tmp_path / "Acfile").write_text("BEGIN scratch\nNAME example.com/x\nCOPY f {{ dest }}\n")
    raw = tmp_path / "raw"
    raw.write_bytes(b"BEGIN scratch\nNAME example.com/x\nCOPY f\x00 /f\n")
    for args in (("--var-file", tmp_path / "vars.toml", tmp_path / "Acfile"), (raw,)):
        r = acbuild("build", "-o", tmp_path / "x.aci", *args)
        assert r.code == 1, r.stderr
        assert "internal error" not in r.stderr and "control character '\\x00'" in r.stderr


def test_a_timeout_beyond_a_year_is_an_error_not_an_overflow() -> None:
    with pytest.raises(AcbuildError) as caught:
        parse_text("BEGIN scratch\nNAME example.com/x\nRUN --timeout=99999999999999999999999 x\n")
    assert "at most 365 days" in caught.value.message
