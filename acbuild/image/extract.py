"""Extraction (execute stage): unpack hostile tar streams into a StagedRootfs.

Reads ACIs (``prefix="rootfs/"``), plain rootfs tarballs and OCI layers (``whiteouts``)
with tarfile in stream mode, and creates every entry itself through ``securepath``.

Policy for hostile names: a leading ``/`` is taken as relative to the root (real tools
write such entries); ``..`` is resolved lexically and an entry that would climb above the
root is rejected. Hardlink targets must be regular files already in the root, or device
records (devices are never made on disk, see ``staging``). Whatever is
at an entry's name is replaced (a directory with all its content), except that a
directory entry keeps an existing directory. xattrs: ``user.*`` always, other namespaces
only as root; what cannot be set is reported as a warning, once per namespace.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, BinaryIO

from acbuild.errors import AcbuildError, ImageError
from acbuild.fs.securepath import ensure_dirs, relpath_in, remove_entry, safe_join
from acbuild.fs.staging import DeviceNode, StagedRootfs

# The tar-reading helpers moved to acbuild.image.tarread; these names stay importable from here.
from acbuild.image.tarread import (
    CHUNK,
    Limits,
    TarSource,
    archive_errors,
    clean_name,
    members,
    refuse_absolute,
    strip_prefix,
)
from acbuild.report import Reporter

# Linux device numbers: 12 bits of major, 20 of minor (what a tar and the kernel can hold).
_MAJORS, _MINORS = 1 << 12, 1 << 20
OutsideHook = Callable[[str, tarfile.TarInfo, tarfile.TarFile], None]


def extract_tar(
    stream: BinaryIO,
    rootfs: StagedRootfs,
    *,
    prefix: str | None = "",
    whiteouts: bool = False,
    limits: Limits = Limits(),  # noqa: B008  (frozen, so sharing one is safe)
    reporter: Reporter | None = None,
    on_outside: OutsideHook | None = None,
    keep: Callable[[str], bool] | None = None,
    progress: Callable[[], None] | None = None,
) -> str:
    """Extract the tar in ``stream`` into ``rootfs``; returns the prefix used.

    ``prefix=None`` decides from the first entry: ``rootfs/`` when it is ``manifest`` or
    ``rootfs`` (an ACI), else ``""``. Entries outside the prefix go to ``on_outside``;
    with ``keep``, only the entries whose name (below the prefix) it accepts are extracted.
    ``progress`` is called every few MB and at the end: only the caller knows a total
    (the compressed size it reads), so it reports.
    """
    writer = RootfsWriter(rootfs, reporter=reporter, whiteouts=whiteouts)
    source = TarSource(stream)
    done = reported = 0
    for member, tar in members(source, limits, allow_absolute=True):
        name = clean_name(member.name)
        if prefix is None:
            prefix = "rootfs/" if name.split("/")[0] in ("manifest", "rootfs") else ""
        if prefix:  # an ACI; a Docker layer may name its entries /etc/...
            refuse_absolute(member)
        rel = strip_prefix(name, prefix)
        if rel is None:
            if on_outside is not None:
                on_outside(name, member, tar)
            continue
        if keep is not None and rel and not keep(rel):
            continue
        if member.isreg():
            if done + member.size > limits.max_total_bytes:
                raise _too_big(limits)
            with archive_errors():
                data = tar.extractfile(member)
                assert data is not None  # a regular file always has a data stream
                writer.file(rel, data, member)
            done += member.size
            if done - reported >= 8 * CHUNK and progress is not None:
                progress()
                reported = done
        elif member.islnk():
            target = strip_prefix(clean_name(member.linkname), prefix)
            if target is None:
                raise ImageError(
                    f"hardlink {member.name!r} points outside the image: {member.linkname!r}"
                )
            writer.hardlink(rel, target)
        else:
            writer.other(rel, member)
    writer.finish()
    if progress is not None:
        progress()
    return prefix or ""


def _too_big(limits: Limits) -> ImageError:
    return ImageError(
        f"image content is larger than the limit of {limits.max_total_bytes} bytes",
        hint="raise the limit with --max-image-size",
    )


class RootfsWriter:
    """Creates entries in a StagedRootfs; every path goes through securepath."""

    def __init__(
        self, rootfs: StagedRootfs, *, reporter: Reporter | None = None, whiteouts: bool = False
    ) -> None:
        self.rootfs = rootfs
        self.root = rootfs.root
        self.reporter = reporter
        self.whiteouts = whiteouts
        self._dirs: dict[str, tuple[int, int]] = {}  # rel -> final (mode, mtime)
        self._layer: set[str] = set()  # rels this archive wrote (for whiteouts)
        self._warned: set[str] = set()

    # -- placing entries -------------------------------------------------------------

    def _place(self, unsafe_rel: str) -> tuple[os.PathLike[str], str]:
        """The path an entry goes to (parents created 0755 owned 0:0) and its rel."""
        parent, _, name = unsafe_rel.rpartition("/")
        if not name:
            raise ImageError("archive entry would replace the root directory with a non-directory")
        try:
            where = ensure_dirs(self.root, parent, on_create=self._new_parent)
        except AcbuildError as e:
            raise ImageError(f"cannot extract {unsafe_rel!r}: {e.message}") from None
        path = where / name
        rel = relpath_in(self.root, path)
        self._touch(rel)
        return path, rel

    def _new_parent(self, rel: str) -> None:
        self.rootfs.devices.pop(rel, None)  # a directory now takes a recorded node's place
        self.rootfs.set_owner(rel, 0, 0)
        self._touch(rel)

    def _touch(self, rel: str) -> None:
        if not self.whiteouts:
            return
        while rel and rel not in self._layer:
            self._layer.add(rel)
            rel = rel.rpartition("/")[0]

    def _clear(self, path: os.PathLike[str], rel: str, *, keep_dir: bool = False) -> None:
        """Remove what is at ``path`` so a new entry can take its place."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._forget(rel, tree=False)
            return
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return
        remove_entry(path)  # type: ignore[arg-type]
        self._forget(rel, tree=stat.S_ISDIR(st.st_mode))

    def _forget(self, rel: str, *, tree: bool) -> None:
        """Drop what the rootfs recorded for ``rel`` (and below it, for a directory)."""
        self.rootfs.devices.pop(rel, None)
        self.rootfs.owners.pop(rel, None)
        self._dirs.pop(rel, None)
        if tree:
            below = rel + "/"
            for table in (self.rootfs.devices, self.rootfs.owners, self._dirs):
                for key in [k for k in table if k.startswith(below)]:
                    del table[key]

    # -- entry kinds -------------------------------------------------------------------

    def file(self, unsafe_rel: str, data: IO[bytes], member: tarfile.TarInfo) -> None:
        if self._whiteout(unsafe_rel):
            return
        path, rel = self._place(unsafe_rel)
        with self._os_errors(unsafe_rel):
            self._clear(path, rel)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    while chunk := _read(data):
                        out.write(chunk)
                # owner before mode: chown clears setuid/setgid bits
                self.rootfs.set_owner(rel, member.uid, member.gid)
                os.fchmod(fd, member.mode & 0o7777)
                self._xattrs(path, member)
                os.utime(fd, ns=(_ns(member), _ns(member)))
            finally:
                os.close(fd)

    def hardlink(self, unsafe_rel: str, unsafe_target: str) -> None:
        try:
            target = safe_join(self.root, unsafe_target)
        except AcbuildError as e:
            raise ImageError(f"hardlink {unsafe_rel!r}: {e.message}") from None
        try:
            st = os.lstat(target)
        except OSError:
            st = None
        target_rel = relpath_in(self.root, target)
        node = self.rootfs.devices.get(target_rel)
        if st is None and node is not None:
            # A hardlink to a recorded device: another record of the same node.
            path, rel = self._place(unsafe_rel)
            with self._os_errors(unsafe_rel):
                self._clear(path, rel)
            self.rootfs.add_device(rel, node, *self.rootfs.owners.get(target_rel, (0, 0)))
            return
        if st is None or not stat.S_ISREG(st.st_mode):
            raise ImageError(
                f"hardlink {unsafe_rel!r} points to {unsafe_target!r}, "
                "which is not a regular file in the image"
            )
        path, rel = self._place(unsafe_rel)
        if path == target:
            return
        with self._os_errors(unsafe_rel):
            self._clear(path, rel)
            os.link(target, path, follow_symlinks=False)
        owner = self.rootfs.owners.get(relpath_in(self.root, target))
        if owner is not None:
            self.rootfs.owners[rel] = owner

    def other(self, unsafe_rel: str, member: tarfile.TarInfo) -> None:
        """Directories, symlinks, devices and FIFOs."""
        if member.isdir() and not unsafe_rel:
            self.root_dir(member)
            return
        if self._whiteout(unsafe_rel):
            return
        if not (member.isdir() or member.issym() or member.isdev()):
            self._warn(f"type:{member.type!r}", f"skipping {member.name!r}: unsupported entry type")
            return
        path, rel = self._place(unsafe_rel)
        with self._os_errors(unsafe_rel):
            self._clear(path, rel, keep_dir=member.isdir())
            if member.isdir():
                if not os.path.lexists(path):
                    os.mkdir(path, 0o700)
                self._dirs[rel] = (member.mode & 0o7777, _ns(member))
            elif member.issym():
                os.symlink(member.linkname, path)
            elif not self._mknod(path, rel, member):
                self.rootfs.set_owner(rel, member.uid, member.gid)
                return
            self.rootfs.set_owner(rel, member.uid, member.gid)
            self._xattrs(path, member)
            if not member.isdir():
                if member.isdev():
                    os.chmod(path, member.mode & 0o7777)
                os.utime(path, ns=(_ns(member), _ns(member)), follow_symlinks=False)

    def root_dir(self, member: tarfile.TarInfo) -> None:
        self.rootfs.set_owner("", member.uid, member.gid)
        self._dirs[""] = (member.mode & 0o7777, _ns(member))

    def _mknod(self, path: os.PathLike[str], rel: str, member: tarfile.TarInfo) -> bool:
        """Make a FIFO as root; record devices always, FIFOs without root (False: nothing
        on disk). A device node on the host would give a hostile image's major:minor to
        whoever reaches the staging tree; the sandbox has its own /dev."""
        kind = "fifo" if member.isfifo() else ("chr" if member.ischr() else "blk")
        if kind != "fifo" and not (0 <= member.devmajor < _MAJORS and 0 <= member.devminor
                                   < _MINORS):
            raise ImageError(f"device {member.name!r} has an impossible number "
                             f"{member.devmajor}:{member.devminor}")
        if kind == "fifo" and self.rootfs.privileged:
            try:
                os.mkfifo(path, member.mode & 0o7777)
                return True
            except PermissionError:
                pass
        self.rootfs.devices[rel] = DeviceNode(
            kind=kind, major=member.devmajor, minor=member.devminor, mode=member.mode & 0o7777
        )
        return False

    # -- whiteouts (OCI/Docker layers) ------------------------------------------------

    def _whiteout(self, unsafe_rel: str) -> bool:
        """Apply ``.wh.`` entries; True if ``unsafe_rel`` was one (it never lands)."""
        parent, _, name = unsafe_rel.rpartition("/")
        if not self.whiteouts or not name.startswith(".wh."):
            return False
        try:
            where = safe_join(self.root, parent, follow_final=True)
        except AcbuildError as e:
            raise ImageError(f"whiteout {unsafe_rel!r}: {e.message}") from None
        if not os.path.isdir(where) or os.path.islink(where):
            return True
        if name == ".wh..wh..opq":
            # opaque: hide what lower layers put here, not what this layer added
            self._prune(where, relpath_in(self.root, where))
            return True
        gone = name[len(".wh.") :]
        rel = relpath_in(self.root, where / gone)
        if gone not in ("", ".", "..") and rel not in self._layer:
            with self._os_errors(unsafe_rel):
                self._clear(where / gone, rel)
        return True

    def _prune(self, where: os.PathLike[str], rel_dir: str) -> None:
        with os.scandir(where) as it:
            entries = list(it)
        below = rel_dir + "/" if rel_dir else ""
        for rel in [r for r in self.rootfs.devices if r.startswith(below)
                    and "/" not in r[len(below):] and r not in self._layer]:
            self._forget(rel, tree=False)  # recorded nodes have nothing on disk to scan
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if rel not in self._layer:
                self._clear(entry.path, rel)  # type: ignore[arg-type]
            elif entry.is_dir(follow_symlinks=False):
                self._prune(entry.path, rel)  # type: ignore[arg-type]

    # -- metadata ------------------------------------------------------------------

    def _xattrs(self, path: os.PathLike[str], member: tarfile.TarInfo) -> None:
        for key, value in sorted(member.pax_headers.items()):
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            space = name.partition(".")[0]
            if not self.rootfs.privileged and space != "user":
                self._warn(space, f"xattrs in the {space}.* namespace need root; not kept")
                continue
            if member.issym() and space == "user":
                continue  # the kernel allows no user.* xattrs on symlinks
            try:
                raw = value.encode("utf-8", "surrogateescape")
                os.setxattr(path, name, raw, follow_symlinks=False)
            except OSError as e:
                self._warn(space, f"cannot set {space}.* xattrs ({e.strerror}); not kept")

    def warn_once(self, key: str, message: str) -> None:
        self._warn(key, message)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned and self.reporter is not None:
            self.reporter.warning(message)
        self._warned.add(key)

    @contextlib.contextmanager
    def _os_errors(self, unsafe_rel: str) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise ImageError(f"cannot extract {unsafe_rel!r}: {e.strerror or e}") from None

    def finish(self) -> None:
        """Final directory modes and mtimes, deepest first, once nothing more is written."""
        for rel in sorted(self._dirs, key=lambda r: r.count("/") + bool(r), reverse=True):
            mode, mtime = self._dirs[rel]
            path = safe_join(self.root, rel)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):  # a later entry may have replaced it
                os.chmod(path, mode)
                os.utime(path, ns=(mtime, mtime))
        self._dirs.clear()


def _read(data: IO[bytes]) -> bytes:
    """A block of a member's data; errors reading the archive are not the disk's errors."""
    with archive_errors():
        try:
            return data.read(CHUNK)
        except OSError as e:
            raise ImageError(f"archive is corrupt: {e}") from None


def _ns(member: tarfile.TarInfo) -> int:
    return int(member.mtime * 1_000_000_000)
