"""Text for people: sizes, durations and summary values (acbuild.terminal makes text safe).

Light on purpose (no rich): the CLI's entry point and every reporter use it.
"""

from __future__ import annotations

from acbuild.report import Field

SHORT_ID = 19  # "sha512-" and 12 hex digits, as rkt shows image IDs



def duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def human_size(n: float) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop returns at GiB


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
