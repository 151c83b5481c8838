"""Users: resolving user and group names through a staged rootfs's /etc/passwd and /etc/group.

Used by RUN (USER/--user), COPY --chown and `acbuild-py run`. The files are read through the
rootfs's safe join and opened by descriptor, so a hostile image cannot point them at the
host's, hang the build with a FIFO or make it read gigabytes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from acbuild.errors import AcbuildError
from acbuild.fs.beneath import open_beneath
from acbuild.fs.securepath import relpath_in, safe_join

MAX_DB_BYTES = 4 << 20  # an /etc/passwd larger than this is not a real one


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    uid: int
    gid: int
    home: str = "/root"


def _read_db(root: Path, name: str) -> list[list[str]]:
    data = _read_bounded(root, f"etc/{name}")
    if data is None:
        return []
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _read_bounded(root: Path, unsafe: str) -> bytes | None:
    """The file's bytes (None when there is none). Symlinks resolve inside the rootfs; the
    resolved path is then opened by descriptors with no symlink followed (a swap cannot
    lead out), non-blocking (a FIFO cannot hang us) and must be a regular file no larger
    than MAX_DB_BYTES (nothing is read whole that a hostile image made huge)."""
    shown = "/" + unsafe
    try:
        rel = relpath_in(root, safe_join(root, unsafe, follow_final=True))
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = open_beneath(top, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        finally:
            os.close(top)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except AcbuildError as e:
        raise AcbuildError(f"the image's {shown}: {e.message}") from None
    except OSError as e:
        raise AcbuildError(f"cannot read the image's {shown}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise AcbuildError(f"the image's {shown} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_DB_BYTES:
            raise AcbuildError(f"the image's {shown} is larger than {MAX_DB_BYTES >> 20} MiB")
        data = f.read(MAX_DB_BYTES + 1)
    if len(data) > MAX_DB_BYTES:  # it grew after fstat
        raise AcbuildError(f"the image's {shown} is larger than {MAX_DB_BYTES >> 20} MiB")
    return data


MAX_ID = (1 << 32) - 2  # uid/gid 2^32-1 is -1 to setresuid: "leave unchanged"


def numeric_id(text: str) -> int | None:
    """A numeric uid or gid; None for a name; an error for a number no id can be."""
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text) > 10 or int(text) > MAX_ID:
        raise AcbuildError(f"user or group id {text[:20]}{'…' if len(text) > 20 else ''} is "
                           f"out of range (0 to {MAX_ID})")
    return int(text)


def _row_id(text: str) -> int | None:
    """An id column of the image's passwd or group file; None where it is not a valid id."""
    try:
        return numeric_id(text)
    except AcbuildError:
        return None


def resolve_group(root: Path, group: str) -> int:
    """A group name or number as a gid."""
    if (gid := numeric_id(group)) is not None:
        return gid
    for row in _read_db(root, "group"):
        if len(row) >= 3 and row[0] == group and (found := _row_id(row[2])) is not None:
            return found
    raise AcbuildError(f"group '{group}' not found in the image's /etc/group")


def resolve_user(root: Path, user: str, group: str | None = None) -> Identity:
    """A user (name or number) and optional group as ids; the group defaults to the user's
    primary group from /etc/passwd, else the same number as the uid."""
    uid = numeric_id(user)
    gid: int | None = None
    home = "/root" if uid == 0 else "/"
    for row in _read_db(root, "passwd"):
        row_uid = _row_id(row[2]) if len(row) >= 6 else None
        if row_uid is None:
            continue
        if (uid is None and row[0] == user) or (uid is not None and row_uid == uid):
            uid, home = row_uid, row[5] or "/"
            gid = _row_id(row[3])
            break
    if uid is None:
        raise AcbuildError(f"user '{user}' not found in the image's /etc/passwd")
    if group is not None:
        gid = resolve_group(root, group)
    return Identity(uid=uid, gid=uid if gid is None else gid, home=home)
