"""Run stage: ``acbuild-py run`` — an ACI's app started in the sandbox as its manifest says.

Every manifest is validated and every dependency resolved through the trust chain first
(render_deps). The rendered tree is unpacked once into a cache keyed by every resolved image
ID, atomically (a temporary directory renamed into place), and never written to again. The
cache is opened once (open_private_dir) and everything after goes through that descriptor:
the entry is found, made, copied and run by descriptor (``/proc/self/fd/N`` paths for cp and
the sandbox), so a path re-pointed after the check leads nowhere. Each run works on a
throw-away copy (``cp -a --reflink=auto``, cheap on btrfs/XFS), so whatever the app writes
is gone when it exits. Pre-start and post-stop handlers run on the same copy.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from acbuild.distribution.fetch import FetchOptions, verify_local
from acbuild.errors import AcbuildError, SandboxError
from acbuild.fs.leftovers import new_held_dir, sweep_at
from acbuild.fs.private import find_private_subdir, open_private_dir, open_private_subdir
from acbuild.fs.staging import StagedRootfs, remove_at
from acbuild.image import manifest
from acbuild.image.manifest import App, ImageManifest
from acbuild.image.manifest_rules import AC_NAME_RULE, is_ac_name
from acbuild.image.users import resolve_user
from acbuild.report import Reporter
from acbuild.run.render_deps import Node, Renderer
from acbuild.sandbox.sandbox import Bind, SandboxResult, SandboxSpec, run_sandboxed
from acbuild.signals import owned
from acbuild.trust.truststore import TrustStore

Network = Literal["none", "host"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Volume:
    """``--volume NAME:/host/path[:ro]``: what backs the image's mount point NAME."""

    name: str
    source: Path
    read_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    image: Path
    args: tuple[str, ...] = ()  # appended to the app's exec
    volumes: tuple[Volume, ...] = ()
    network: Network = "none"
    stdin: bool = False
    fetch: FetchOptions = field(default_factory=FetchOptions)  # trust store, image store
    set_env: tuple[tuple[str, str], ...] = ()  # --set-env, over the manifest's environment
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def parse_volume(text: str) -> Volume:
    name, sep, rest = text.partition(":")
    read_only = False
    for suffix, ro in ((":ro", True), (":rw", False)):
        if rest.endswith(suffix):
            rest, read_only = rest.removesuffix(suffix), ro
    if not name or not sep or not rest:
        raise SandboxError(f"invalid volume '{text}': expected NAME:/host/path[:ro]")
    return Volume(name=name, source=Path(rest), read_only=read_only)


def parse_set_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SandboxError(f"invalid --set-env '{text}': expected NAME=VALUE")
    return name, value


def cache_root(environ: Mapping[str, str]) -> Path:
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "acbuild-py"


def run_image(options: RunOptions, reporter: Reporter, on_output: Callable[[str], None]) -> int:
    """Run the image's app (pre-start handlers first, post-stop last); its exit status."""
    _check_volumes(options.volumes)
    # The image the user names may be unsigned (it is their file); IMAGE.asc, when there,
    # must verify.
    verify_local(options.image, TrustStore.locate(options.fetch.trust_store), reporter)
    # Rendered rootfs trees are run as they are: no one else may write where they live, nor
    # steer the path to them. The cache is opened once and used only through that
    # descriptor: re-pointing its path afterwards changes nothing here.
    where = cache_root(options.environ)
    cache = open_private_dir(where, what="run cache")
    try:
        return _run_cached(RunCache(fd=cache, shown=where), options, reporter, on_output)
    finally:
        os.close(cache)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCache:
    """The run cache directory, open (``fd``, owned by the caller); ``shown`` in messages."""

    fd: int
    shown: Path


def _run_cached(cache: RunCache, options: RunOptions, reporter: Reporter,
                on_output: Callable[[str], None]) -> int:
    rendered, image_manifest = rendered_rootfs(options, cache, reporter)
    try:
        app = image_manifest.app or App()
        argv = (*app.exec, *options.args)
        if not argv:
            raise SandboxError(f"{options.image}: the image has no app to run (no EXEC)",
                               hint="give a command after --: acbuild-py run IMAGE -- /bin/sh")
        with _scratch(cache) as scratch:
            _copy_tree(rendered, scratch)
            base = _spec(scratch, image_manifest, app, options)
            for handler in _handlers(app, "pre-start"):
                status = _run(base, handler, on_output)
                if status.exit_status != 0:
                    raise SandboxError(f"pre-start handler {list(handler)} failed with exit "
                                       f"status {status.exit_status}; the app was not started")
            try:
                return _run(base, argv, on_output).exit_status
            finally:
                for handler in _handlers(app, "post-stop"):
                    status = _run(base, handler, on_output)
                    if status.exit_status != 0:
                        reporter.warning(f"post-stop handler {list(handler)} failed with exit "
                                         f"status {status.exit_status}")
    finally:
        os.close(rendered)


def fd_path(fd: int, rel: str = "") -> Path:
    """``rel`` below the directory open at ``fd``, as a path this process (or a child that
    inherits ``fd``) resolves through the descriptor, never through a name outside it."""
    return Path(f"/proc/self/fd/{fd}/{rel}" if rel else f"/proc/self/fd/{fd}")


def rendered_rootfs(options: RunOptions, cache: RunCache,
                    reporter: Reporter) -> tuple[int, ImageManifest]:
    """A descriptor of the cached, rendered rootfs of the image (the caller closes it) and
    its manifest; rendered when missing.

    A rendered entry is trusted because of where it is, not checked against the images:
    found only below the run cache's descriptor, never through a symlink, and only if it
    and its rootfs/ are this user's and writable by no one else (so it was made by this
    user or root). Hashing a whole rootfs on every run would cost what the cache saves.
    """
    renderer = Renderer(fetch=options.fetch, reporter=reporter)
    tree = renderer.resolve(options.image)
    key = tree.cache_key()
    entries = open_private_subdir(cache.fd, "rootfs", what="run cache directory",
                                  shown=cache.shown / "rootfs")
    try:
        shown = cache.shown / "rootfs" / key
        found = _open_entry(entries, key, shown)
        if found is None:
            _render_into_cache(renderer, tree, entries, key)
            found = _open_entry(entries, key, shown)
            if found is None:
                raise SandboxError(f"the rendered rootfs {shown} vanished after it was made")
        else:
            reporter.detail(f"using cached rootfs {shown}")
    finally:
        os.close(entries)
    return found, tree.manifest


def _open_entry(entries: int, key: str, shown: Path) -> int | None:
    """The rendered entry ``key``'s rootfs/, opened and checked; None when there is none."""
    entry = find_private_subdir(entries, key, what="rendered rootfs", shown=shown)
    if entry is None:
        return None
    try:
        try:
            meta = os.open(_MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                           dir_fd=entry)
        except OSError as e:
            raise SandboxError(f"rendered rootfs {shown} has no manifest ({e.strerror})",
                               hint=f"remove {shown}; it is rendered again") from None
        try:
            st = os.fstat(meta)
        finally:
            os.close(meta)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise SandboxError(f"rendered rootfs {shown}: its manifest is not a file of yours",
                               hint=f"remove {shown}; it is rendered again")
        rootfs = find_private_subdir(entry, "rootfs", what="rendered rootfs",
                                     shown=shown / "rootfs")
        if rootfs is None:
            raise SandboxError(f"rendered rootfs {shown} has no rootfs/",
                               hint=f"remove {shown}; it is rendered again")
        return rootfs
    finally:
        os.close(entry)


_MANIFEST = "manifest"
_ENTRY_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# What a run makes in the cache and removes when it ends; a killed run's (SIGKILL) is removed
# by the next (fs.leftovers), and an untagged one (another host's, an older version's) once
# nothing has changed in it for a day.
_RENDERING, _RUNNING = ".tmp-", "run-"
_UNTAGGED_AFTER = 24 * 3600.0


def _new_dir(parent: int, prefix: str) -> tuple[str, int]:
    """A new held directory (fs.leftovers.new_held_dir) in ``parent``, after what killed runs
    left there is swept."""
    sweep_at(parent, prefix, others_after=_UNTAGGED_AFTER)
    return new_held_dir(parent, prefix)


def _drop(parent: int, made: tuple[str, int]) -> None:
    """Close the descriptor and remove the name from ``parent`` if it is still there (a
    temporary directory not renamed into place)."""
    name, fd = made
    os.close(fd)
    remove_at(parent, name)


def _render_into_cache(renderer: Renderer, tree: Node, entries: int, key: str) -> None:
    """Render into a new directory in ``entries`` and rename it to ``key`` there."""
    with owned(lambda: _new_dir(entries, _RENDERING),
               lambda made: _drop(entries, made)) as (name, temp):
        os.mkdir("rootfs", 0o755, dir_fd=temp)
        renderer.render(tree, StagedRootfs(root=fd_path(temp, "rootfs")))
        out = os.open(_MANIFEST, _ENTRY_FILE, 0o644, dir_fd=temp)
        with open(out, "wb") as f:
            f.write(manifest.to_json_bytes(tree.manifest))
        try:
            os.rename(name, key, src_dir_fd=entries, dst_dir_fd=entries)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Another run rendered the same image meanwhile: its copy is as good as ours
            # (and is checked like any entry found).


@contextmanager
def _scratch(cache: RunCache) -> Iterator[int]:
    """A private directory for one run's rootfs copy (beside the cache, for reflinks),
    open; removed afterwards."""
    runs = open_private_subdir(cache.fd, "run", what="run cache directory",
                               shown=cache.shown / "run")
    try:
        with owned(lambda: _new_dir(runs, _RUNNING),
                   lambda made: _drop(runs, made)) as (_, path):
            yield path
    finally:
        os.close(runs)


def _copy_tree(source: int, scratch: int) -> None:
    """The rootfs open at ``source`` copied to ``rootfs`` in ``scratch``. cp is handed both
    descriptors and names nothing but paths through them (``/.``: the directory itself,
    not the magic link, which -a would copy as a symlink)."""
    proc = subprocess.run(["cp", "-a", "--reflink=auto", "--", f"{fd_path(source)}/.",
                           str(fd_path(scratch, "rootfs"))],
                          capture_output=True, text=True, pass_fds=(source, scratch))
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or ["cp failed"]
        raise SandboxError(f"cannot copy the cached rootfs: {detail[0]}")


def _spec(scratch: int, image: ImageManifest, app: App, options: RunOptions) -> SandboxSpec:
    """What the sandbox runs: ``rootfs`` in the scratch directory open at ``scratch``,
    named through that descriptor (the helper inherits it), as are the empty volumes."""
    root = fd_path(scratch, "rootfs")
    try:
        identity = resolve_user(root, app.user, app.group)
    except AcbuildError as e:
        raise SandboxError(f"{options.image}: {e.message}") from None
    env = {"AC_APP_NAME": image.name.rsplit("/", 1)[-1], "HOME": identity.home}
    env.update((e.name, e.value) for e in app.environment)
    env.update(options.set_env)
    if os.geteuid() != 0 and (identity.uid, identity.gid, app.supplementary_gids) != (0, 0, ()):
        raise SandboxError(
            f"the app runs as uid {identity.uid} gid {identity.gid}; only root can run it "
            "(a rootless run has uid 0 only)", hint="run acbuild-py run as root")
    return SandboxSpec(
        rootfs=root, argv=("/bin/true",), env=tuple(env.items()),
        workdir=app.working_directory or "/", uid=identity.uid, gid=identity.gid,
        supplementary_gids=app.supplementary_gids, network=options.network,
        hostname=_hostname(image.name), binds=_binds(app, options, scratch),
        stdin=options.stdin, dir_fd=scratch,
    )


def _hostname(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in last).strip("-")
    return cleaned[:63] or "acbuild"


def _check_volumes(volumes: tuple[Volume, ...]) -> None:
    seen: set[str] = set()
    for v in volumes:
        if v.name in seen:
            raise SandboxError(f"--volume {v.name} is given more than once")
        seen.add(v.name)


def _binds(app: App, options: RunOptions, scratch: int) -> tuple[Bind, ...]:
    given = {v.name: v for v in options.volumes}
    known = {mp.name for mp in app.mount_points}
    for name in given:
        if name not in known:
            have = ", ".join(sorted(known)) or "none"
            raise SandboxError(f"--volume {name}: the image has no mount point '{name}' "
                               f"(it has: {have})")
    binds = []
    for mp in app.mount_points:
        volume = given.get(mp.name)
        if volume is None:
            # As rkt does: a mount point nobody backs gets an empty directory of its own.
            source = empty_volume(scratch, mp.name)
            read_only = mp.read_only
        else:
            source, read_only = volume.source, volume.read_only or mp.read_only
        binds.append(Bind(source=source, target=mp.path, read_only=read_only))
    return tuple(binds)


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def empty_volume(scratch: int, name: str) -> Path:
    """A new empty directory ``volumes/NAME`` in the directory open at ``scratch``, made
    relative to directory fds with O_NOFOLLOW one checked component at a time: NAME is one
    ACName (never ``..`` nor a path), a symlink planted on the way is an error, and an
    existing one (a duplicate mount point) is refused rather than shared. Its path is named
    through ``scratch`` (see fd_path)."""
    if not is_ac_name(name):
        raise SandboxError(f"mount point name {name!r} is not an ACName ({AC_NAME_RULE})")
    fd = os.dup(scratch)
    try:
        for part, exist_ok in (("volumes", True), (name, False)):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                if not exist_ok:
                    raise SandboxError(f"mount point {name!r} is listed twice") from None
            try:
                child = os.open(part, _DIR, dir_fd=fd)
            except OSError as e:
                shown = f"volumes/{name}" if part == name else "volumes"
                raise SandboxError(f"cannot make the volume for mount point {name!r}: the "
                                   f"run's {shown} is not a plain directory "
                                   f"({e.strerror})") from None
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return fd_path(scratch, f"volumes/{name}")


def _handlers(app: App, event: str) -> tuple[tuple[str, ...], ...]:
    return tuple(h.exec for h in app.event_handlers if h.name == event)


def _run(base: SandboxSpec, argv: tuple[str, ...],
         on_output: Callable[[str], None]) -> SandboxResult:
    return run_sandboxed(replace(base, argv=argv), on_output)
