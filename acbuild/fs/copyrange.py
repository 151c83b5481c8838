"""Copying bytes between descriptors: in the kernel (copy_file_range) where the filesystems
allow it, else through a buffer."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

# What copy_file_range answers where it cannot serve: across filesystems on older kernels,
# not implemented, a filesystem or file kind it does not take, a sealed or special file.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                             errno.EPERM})
_KERNEL_CHUNK = 8 << 20
_BUFFER_CHUNK = 1 << 20


def copy_range(src: int, dst: int, size: int,
               each: Callable[[int], None] | None = None) -> None:
    """Up to ``size`` bytes from each descriptor's offset on (fewer if ``src`` ends first);
    ``each`` hears how many bytes every piece moved."""
    kernel = True
    while size > 0:
        if kernel:
            try:
                n = os.copy_file_range(src, dst, min(size, _KERNEL_CHUNK))
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
        else:
            data = memoryview(os.read(src, min(size, _BUFFER_CHUNK)))
            n = len(data)
            while data:
                data = data[os.write(dst, data):]
        if n == 0:
            return
        size -= n
        if each is not None:
            each(n)
