"""Numbers in text that others wrote: headers, manifests, /etc files of an image.

``str.isdigit()`` is true of "²", "①" and "٣", and ``int()``/``float()`` then fail or read
them: a hostile registry's ``Retry-After: ²`` was an internal error. Only ASCII digits are a
number here.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]+")


def ascii_int(text: str, *, most_digits: int = 18) -> int | None:
    """``text`` (surrounding whitespace aside) as a non-negative integer of ASCII digits,
    at most ``most_digits`` of them; None for anything else."""
    text = text.strip(" \t")
    if len(text) > most_digits or not _DIGITS.fullmatch(text):
        return None
    return int(text)
