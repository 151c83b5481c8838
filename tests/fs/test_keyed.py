"""acbuild.fs.keyed's listing signature: what stands for "the directory holds the same
entries" (a cache entry's lower directories, a user's base directories, a COPY's sources)."""

from __future__ import annotations

import zlib

from acbuild.fs.keyed import listing_signature
from tests.support.crcforge import forge


def test_a_name_forged_to_the_same_crc32_is_another_listing() -> None:
    """Red-team RC-4: the listing was (count, XOR of CRC32s), and four chosen bytes give a
    name any CRC32: renaming a file to it kept the signature."""
    forged = forge(b"01", b"evil-", zlib.crc32(b"01good")).decode()
    assert zlib.crc32(b"01" + forged.encode()) == zlib.crc32(b"01good")
    before = [("good", False, True), ("lib", True, False)]
    after = [(forged, False, True), ("lib", True, False)]
    assert listing_signature(before) != listing_signature(after)


def test_the_listing_is_of_names_and_kinds_in_any_order() -> None:
    entries = [("a", False, True), ("b", True, False), ("c", False, False)]
    assert listing_signature(entries) == listing_signature(reversed(entries))
    assert listing_signature(entries) != listing_signature(
        [("a", False, True), ("b", False, True), ("c", False, False)])
    assert listing_signature(entries) != listing_signature(entries[:2])
    # names are framed: "ab" + "c" is not "a" + "bc"
    assert listing_signature([("ab", False, True), ("c", False, True)]) != \
        listing_signature([("a", False, True), ("bc", False, True)])
