"""Template variables as the user gives them (--var KEY=VALUE, --var-file): names and values
checked where they are read. Apart from render, so that the CLI checks a --var while it parses
options (a usage error) without loading jinja2.
"""

from __future__ import annotations

import re

from acbuild.errors import AcfileError

_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_var(arg: str) -> tuple[str, str]:
    """``KEY=VALUE`` to (key, value), both checked. Raises AcfileError."""
    key, sep, value = arg.partition("=")
    if not sep:
        raise AcfileError(f"--var {arg!r} must be KEY=VALUE")
    return checked_name(key, f"--var {arg!r}"), checked_value(value, key, "--var")


# Values end up in words: a NUL or an escape sequence would pass into paths, the manifest
# and terminals. Newlines and tabs are text a template may lay out.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def checked_value(value: str, key: str, where: str) -> str:
    if found := _CONTROL.search(value):
        raise AcfileError(f"{where}: variable {key!r} holds the control character {found[0]!r}",
                          hint="variables hold printable text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AcfileError(f"{where}: variable {key!r} is not valid UTF-8 text") from None
    return value


def checked_name(key: str, where: str) -> str:
    if not _VARIABLE_NAME.fullmatch(key):
        raise AcfileError(
            f"{where}: {key!r} is not a valid variable name (letters, digits and _, "
            "not starting with a digit)"
        )
    return key
