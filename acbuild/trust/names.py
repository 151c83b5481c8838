"""Trust: names taken from manifests, checked before they choose keys, files or URLs.

An image name decides which keys are trusted for it, where the store files it and where
publish writes it, so it must be an ACIdentifier (no ``.``/``..`` segments, no ``//``). A
label value that becomes part of a file name (version, os, arch) must be one plain component.
"""

from __future__ import annotations

import re

from acbuild.errors import ImageError
from acbuild.image.manifest_rules import AC_IDENTIFIER_RULE, is_ac_identifier

MAX_NAME = 512
_FILE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}")
FILE_PART_RULE = "letters, digits and '._+~-', starting with a letter or digit"


def check_image_name(name: str, where: str) -> str:
    """``name`` when it is an ACIdentifier whose path segments are all real ones; an
    ImageError naming ``where`` otherwise. (The Go reference accepts ``a.com/../b`` as an
    ACIdentifier; a name that chooses keys and paths must not climb.)"""
    if len(name) > MAX_NAME or not is_ac_identifier(name):
        raise ImageError(f"{where}: image name {name!r} is not an ACIdentifier "
                         f"({AC_IDENTIFIER_RULE})")
    if not plain_segments(name):
        raise ImageError(f"{where}: image name {name!r} is not an ACIdentifier a path can "
                         "be made of: it has an empty, '.' or '..' segment")
    return name


def check_file_part(value: str, what: str, where: str) -> str:
    """``value`` when it can be one component of a file name; ImageError otherwise."""
    if not _FILE_PART.fullmatch(value):
        raise ImageError(f"{where}: {what} {value!r} cannot be part of a file name "
                         f"({FILE_PART_RULE})")
    return value


def plain_segments(name: str) -> bool:
    """Whether every ``/`` segment of ``name`` is a real one (not empty, ``.`` or ``..``)."""
    return all(part not in ("", ".", "..") for part in name.split("/"))
