"""Acfile words: what may name a signing key (SIGN, ``--sign``, ``sign --key``).

A key is named by a key ID or fingerprint (hex, ``0x`` optional, spaces allowed), an e-mail
address (``ada@example.com`` or ``<ada@example.com>``), ``=`` and an exact user ID, or a
part of a user ID. gpg reads any word starting with ``-`` as an option (``--agent-program``
runs a program), so such a word is never a key; the key is matched in Python, not by gpg.
"""

from __future__ import annotations

import re
import unicodedata

MAX_KEY_SPEC = 256
KEY_SPEC_RULE = ("a key ID, fingerprint, e-mail address or user ID (not starting with '-', "
                 "no control characters)")
_HEX = re.compile(r"(?:0x)?([0-9a-f]{8}|[0-9a-f]{16}|[0-9a-f]{40}|[0-9a-f]{64})", re.I)


def key_spec_problem(spec: str) -> str | None:
    """Why ``spec`` cannot name a signing key; None when it can."""
    text = spec.strip()
    if not text:
        return "the signing key must not be empty"
    if len(text) > MAX_KEY_SPEC:
        return f"the signing key is longer than {MAX_KEY_SPEC} characters"
    if text.startswith("-"):
        return (f"signing key {spec!r} starts with '-': gpg would read it as an option; "
                f"expected {KEY_SPEC_RULE}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text):
        return f"signing key {spec!r} contains a control character; expected {KEY_SPEC_RULE}"
    return None


def hex_key_id(spec: str) -> str | None:
    """The lowercase hex of a key ID or fingerprint ``spec``; None when it is not one."""
    compact = spec.strip().replace(" ", "")
    m = _HEX.fullmatch(compact)
    return m.group(1).lower() if m else None
