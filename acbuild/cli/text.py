"""Text for people: sizes, durations, summary values and terminal-safe strings.

Light on purpose (no rich): the CLI's entry point and every reporter use it.
"""

from __future__ import annotations

import re

from acbuild.report import Field

SHORT_ID = 19  # "sha512-" and 12 hex digits, as rkt shows image IDs

# C0 controls but tab, DEL, and C1 controls: what a terminal would act on.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def human_size(n: float) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop returns at GiB


def printable(text: str) -> str:
    """``text`` with every control character written as a Python escape (``\\x1b``), so
    what an image or a program says cannot move the cursor or retitle the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def latest_state(line: str) -> str:
    """What a terminal would show for one line of program output: the text after the last
    carriage return that rewrote it, backspaces applied, tabs expanded."""
    parts = [p for p in line.split("\r") if p]
    shown: list[str] = []
    for char in parts[-1] if parts else "":
        if char == "\b":
            if shown:
                shown.pop()
        else:
            shown.append(char)
    return "".join(shown).expandtabs(8)


def value_text(field: Field) -> str:
    value = field.value
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return ", ".join(value) or "none"
    if field.unit == "bytes" and isinstance(value, int | float):
        return human_size(value)
    if field.unit == "seconds" and isinstance(value, int | float):
        return duration(value)
    if field.key == "image_id" and isinstance(value, str) and value.startswith("sha512-"):
        return value[:SHORT_ID]  # the whole ID is the result on stdout
    return str(value)
