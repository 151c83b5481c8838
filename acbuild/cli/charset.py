"""ASCII for terminals that cannot show UTF-8: ``TERM=dumb``, or a locale that is not UTF-8
(``LANG=C``, ``LC_ALL=C``, ``en_US.ISO-8859-1``).

Python itself writes UTF-8 under a C or POSIX locale, and under a locale it cannot set (PEP
538, 540): that UTF-8 is Python's choice, not the terminal's, so the locale the user set is
read from how Python started. What goes to such a terminal passes through ``AsciiStream``,
which reports an ASCII encoding (rich then draws ASCII bars and tree lines) and writes every
other character as ASCII (``acbuild.terminal.to_ascii``). Pipes and files get the text as it
is: a log keeps UTF-8.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from acbuild.terminal import to_ascii


def shows_utf8(stream: TextIO) -> bool:
    """Whether the terminal ``stream`` writes to can show text beyond ASCII."""
    if os.environ.get("TERM") == "dumb":
        return False
    encoding = (getattr(stream, "encoding", None) or "ascii").lower().replace("-", "")
    if not encoding.startswith("utf"):
        return False
    # UTF-8 mode that nobody asked for: Python turned an ASCII (or unusable) locale into it.
    asked = os.environ.get("PYTHONUTF8") == "1" or "utf8" in sys._xoptions
    return not sys.flags.utf8_mode or asked


class AsciiStream:
    """A text stream that writes ASCII only (see the module's docstring). It has no
    ``buffer``: click then writes through it rather than around it."""

    encoding = "ascii"
    errors = "strict"

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(to_ascii(text))
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, writable, closed
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self._inner, name)


def ascii_terminals() -> None:
    """Give stdout and stderr an AsciiStream where they are terminals that cannot show
    UTF-8 (the CLI's start)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and stream.isatty() and not shows_utf8(stream):
            setattr(sys, name, AsciiStream(stream))
