"""acbuild.numbers: only ASCII digits make a number."""

from __future__ import annotations

import pytest

from acbuild.numbers import ascii_int


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("42", 42), (" 7\t", 7), ("00010", 10), ("9" * 18, int("9" * 18)),
    ("", None), (" ", None), ("\u00b2", None), ("\u0663", None), ("\u2460", None),
    ("1e3", None), ("-1", None), ("+1", None), ("1_000", None), ("9" * 19, None),
    ("1\n", None), ("\u00a01", None),
])
def test_ascii_int(text: str, value: int | None) -> None:
    assert ascii_int(text) == value


def test_the_digit_limit_is_the_callers() -> None:
    assert ascii_int("65535", most_digits=5) == 65535
    assert ascii_int("065535", most_digits=5) is None
