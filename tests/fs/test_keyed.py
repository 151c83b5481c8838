"""acbuild.fs.keyed's listing signatures: what stands for "the directory holds the same
entries" (a cache entry's lower directories, a user's base directories, a COPY's sources)."""

from __future__ import annotations

import hashlib
import os
import zlib

from hypothesis import given
from hypothesis import strategies as st

from acbuild.fs.keyed import WalkListing, by_name_bytes, listing_signature
from tests.support.crcforge import forge

# Names as a directory listing gives them: ASCII, other UTF-8, and undecodable bytes (as
# surrogate escapes, which sort by code point before characters they follow as bytes).
_NAMES = st.lists(st.text(st.sampled_from(["a", "b", "Z", "0", "~", ".", "é", "\u0800",
                                           "\ue000", "\udc80", "\udcff"]),
                          min_size=1, max_size=4), unique=True, max_size=12)


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


@given(names=_NAMES, kinds=st.lists(st.sampled_from([(False, True), (True, False),
                                                     (False, False)]), min_size=12,
                                    max_size=12))
def test_the_listing_is_the_digest_of_the_sorted_framed_entries(
        names: list[str], kinds: list[tuple[bool, bool]]) -> None:
    """What the docstring defines (cache entries store these digests: a faster encoding
    must give the same bytes), ASCII names or not."""
    entries = [(name, *kind) for name, kind in zip(names, kinds, strict=False)]
    framed = sorted(b"%d%d" % (is_dir, is_file) + os.fsencode(name) + b"\0"
                    for name, is_dir, is_file in entries)
    assert listing_signature(entries) == hashlib.blake2b(b"".join(framed),
                                                         digest_size=32).digest()


@given(names=_NAMES)
def test_names_sort_by_their_bytes(names: list[str]) -> None:
    assert by_name_bytes(names, str) == sorted(names, key=os.fsencode)
    pairs = [(name, len(name)) for name in names]
    assert by_name_bytes(pairs, lambda pair: pair[0]) == \
        sorted(pairs, key=lambda pair: os.fsencode(pair[0]))


def _walked(entries: list[tuple[str, bool, bool]]) -> bytes:
    listing = WalkListing()
    for entry in entries:
        listing.add(*entry)
    return listing.digest()


@given(names=_NAMES, kinds=st.lists(st.sampled_from([(False, True), (True, False),
                                                     (False, False)]), min_size=12,
                                    max_size=12))
def test_a_walk_listing_is_the_digest_of_its_framed_entries_in_order(
        names: list[str], kinds: list[tuple[bool, bool]]) -> None:
    """A COPY source's listing, taken as the walk goes (the key's walk and the COPY's give
    the same entries in the same order): each entry's kind and path, NUL-ended, however
    many flushes the digest took."""
    entries = [(name, *kind) for name, kind in zip(names, kinds, strict=False)] * 200
    framed = b"".join((b"d" if is_dir else b"f" if is_file else b"o") + os.fsencode(name)
                      + b"\0" for name, is_dir, is_file in entries)
    assert _walked(entries) == hashlib.blake2b(framed, digest_size=32).digest()


def test_a_walk_listing_tells_names_kinds_and_count_apart() -> None:
    entries = [("a", False, True), ("b", True, False), ("b/c", False, False)]
    assert _walked(entries) == _walked(list(entries))
    assert _walked(entries) != _walked(entries[:2])
    assert _walked(entries) != _walked([("a", False, True), ("b", False, True),
                                        ("b/c", False, False)])
    assert _walked([("ab", False, True), ("c", False, True)]) != \
        _walked([("a", False, True), ("bc", False, True)])
