"""The CLI's last edge for the environment's errors: an OSError that reaches it (an option
path through a regular file, a full disk, a directory without permission) is the user's to
fix, so it becomes a one-line error naming the path instead of an internal error."""

from __future__ import annotations

import errno
import os

from acbuild.errors import AcbuildError
from acbuild.fs.reasons import not_a_directory
from acbuild.fs.regular import NotRegularFile

# What the environment does to a correct program. Anything else (EBADF, EINVAL...) is a bug
# and stays an internal error.
_ENVIRONMENT = frozenset({
    errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENOSPC,
    errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOENT, errno.EMFILE,
    errno.ENFILE, errno.EIO, errno.ETXTBSY, errno.EBUSY, errno.EFBIG, errno.EXDEV,
    errno.ENOTEMPTY, errno.EMLINK, errno.ENXIO, errno.ENODEV, errno.EAGAIN, errno.ENOMEM,
})


def from_os_error(error: OSError) -> AcbuildError | None:
    """The user's error an OSError stands for, or None when it is a bug of ours."""
    if error.errno not in _ENVIRONMENT and not isinstance(error, NotRegularFile):
        return None
    reason = error.strerror or os.strerror(error.errno or 0)
    if not isinstance(error.filename, (str, bytes, os.PathLike)):
        # None, or a descriptor (an OSError of os.scandir(fd), say): no path to name
        return AcbuildError(reason[:1].lower() + reason[1:])
    path = os.fsdecode(error.filename)
    if error.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := not_a_directory(path)):
        where = "" if blocker == path else f" (on the way to {path!r})"
        return AcbuildError(f"{blocker!r} is not a directory{where}",
                            hint="give a path whose parent directories are directories")
    other = f" -> {os.fsdecode(error.filename2)!r}" \
        if isinstance(error.filename2, (str, bytes, os.PathLike)) else ""
    return AcbuildError(f"{path!r}{other}: {reason[:1].lower() + reason[1:]}")
