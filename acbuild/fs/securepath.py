"""Secure paths (execute stage): resolve untrusted paths inside a root as if it were ``/``.

Every path that comes from an archive, an Acfile or another image is ``unsafe_*`` until
``safe_join`` has resolved it; nothing here ever follows a symlink out of the root.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from acbuild.errors import AcbuildError
from acbuild.fs.staging import remove_tree

# The kernel's limit for symlinks met in one resolution (MAXSYMLINKS); the same bound
# keeps a hostile archive from building a loop we would chase forever.
MAX_SYMLINKS = 40


class PathError(AcbuildError):
    """An untrusted path cannot be resolved inside its root (loop, non-directory in the way)."""


def _split(unsafe_path: str) -> list[str]:
    return [part for part in unsafe_path.split("/") if part not in ("", ".")]


def _walk(
    root: Path,
    unsafe_path: str,
    *,
    follow_final: bool,
    make_dirs: int | None = None,
    on_create: Callable[[str], None] | None = None,
) -> list[str]:
    """Resolve ``unsafe_path`` to components below ``root``, none of them a symlink (the
    final one may be, unless followed). ``make_dirs`` creates missing components with
    that mode and insists that every component is a directory."""
    done: list[str] = []
    todo = _split(unsafe_path)
    todo.reverse()  # a stack: the next component is at the end
    links = 0
    while todo:
        part = todo.pop()
        if part == "..":
            # chroot semantics: ".." at the root stays at the root
            if done:
                done.pop()
            continue
        if part == ".":
            continue
        here = root.joinpath(*done, part)
        final = not todo
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            # a parent is a file: nothing can exist below it
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode) and (follow_final or not final):
            links += 1
            if links > MAX_SYMLINKS:
                raise PathError(f"too many levels of symbolic links resolving {unsafe_path!r}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []  # absolute targets are relative to the root
            more = _split(target)
            more.reverse()
            todo.extend(more)
            continue
        if make_dirs is not None:
            rel = "/".join([*done, part])
            if st is None:
                os.mkdir(here, make_dirs)
                if on_create is not None:
                    on_create(rel)
            elif not stat.S_ISDIR(st.st_mode):
                raise PathError(f"cannot create directory {rel!r}: a non-directory is in the way")
        done.append(part)
    return done


def safe_join(root: Path, unsafe_path: str, *, follow_final: bool = False) -> Path:
    """``unsafe_path`` resolved inside ``root`` with chroot semantics.

    ``..`` never climbs above the root; symlinks met on the way are resolved inside the
    root (absolute targets relative to it). The final component is not followed unless
    ``follow_final``. Components that do not exist are joined as they are.
    """
    return root.joinpath(*_walk(root, unsafe_path, follow_final=follow_final))


def relpath_in(root: Path, path: Path) -> str:
    """``path`` as a POSIX path relative to ``root`` ("a/b"; "" for the root itself)."""
    try:
        rel = PurePosixPath(Path(path).relative_to(root).as_posix())
    except ValueError:
        raise PathError(f"{str(path)!r} is outside {str(root)!r}") from None
    if ".." in rel.parts:
        raise PathError(f"{str(path)!r} is outside {str(root)!r}")
    text = rel.as_posix()
    return "" if text == "." else text


def ensure_dirs(
    root: Path,
    unsafe_dir: str,
    *,
    mode: int = 0o755,
    on_create: Callable[[str], None] | None = None,
) -> Path:
    """``mkdir -p`` of ``unsafe_dir`` inside ``root``; returns the resolved directory.

    Symlinks on the way are followed inside the root, never out of it. A non-directory in
    the way is an error. ``on_create(rel)`` is called for each directory made, in order, so
    callers can give it an owner. The mode is applied exactly (the umask is undone).
    """

    def made(rel: str) -> None:
        # mkdir's mode passes through the umask; the image must not depend on it
        os.chmod(root / rel, mode)
        if on_create is not None:
            on_create(rel)

    parts = _walk(root, unsafe_dir, follow_final=True, make_dirs=mode, on_create=made)
    return root.joinpath(*parts)


def remove_entry(path: Path) -> bool:
    """Remove whatever is at ``path`` (a directory with its content) without following a
    symlink; True if something was there."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if stat.S_ISDIR(st.st_mode):
        remove_tree(path)
    else:
        os.unlink(path)
    return True
