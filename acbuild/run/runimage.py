"""Run stage: ``acbuild-py run`` — an ACI's app started in the sandbox as its manifest says.

Every manifest is validated and every dependency resolved through the trust chain first
(render_deps). The rendered tree is unpacked once into a cache keyed by every resolved image
ID, atomically (a temporary directory renamed into place), and never written to again: each
run works on a throw-away copy (``cp -a --reflink=auto``, cheap on btrfs/XFS), so whatever
the app writes is gone when it exits. Pre-start and post-stop handlers run on the same copy.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from acbuild.distribution.fetch import FetchOptions, verify_local
from acbuild.errors import AcbuildError, SandboxError
from acbuild.fs.private import open_private_dir
from acbuild.fs.staging import StagedRootfs, remove_tree
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
    # Rendered rootfs trees are run as they are: no one else may write where they live,
    # nor steer the path to them (resolved as the step cache's: no symlink or directory of
    # another user on the way), so only you or root could re-point it after this.
    cache = cache_root(options.environ)
    os.close(open_private_dir(cache, what="run cache"))
    rendered, image_manifest = rendered_rootfs(options, cache, reporter)
    app = image_manifest.app or App()
    argv = (*app.exec, *options.args)
    if not argv:
        raise SandboxError(f"{options.image}: the image has no app to run (no EXEC)",
                           hint="give a command after --: acbuild-py run IMAGE -- /bin/sh")
    with _scratch(cache) as scratch:
        root = scratch / "rootfs"
        _copy_tree(rendered, root)
        base = _spec(root, image_manifest, app, options, scratch)
        for handler in _handlers(app, "pre-start"):
            status = _run(base, handler, on_output)
            if status.exit_status != 0:
                raise SandboxError(f"pre-start handler {list(handler)} failed with exit status "
                                   f"{status.exit_status}; the app was not started")
        try:
            return _run(base, argv, on_output).exit_status
        finally:
            for handler in _handlers(app, "post-stop"):
                status = _run(base, handler, on_output)
                if status.exit_status != 0:
                    reporter.warning(f"post-stop handler {list(handler)} failed with exit "
                                     f"status {status.exit_status}")


def rendered_rootfs(options: RunOptions, cache: Path,
                    reporter: Reporter) -> tuple[Path, ImageManifest]:
    """The cached, rendered rootfs of the image and its manifest; made when missing."""
    renderer = Renderer(fetch=options.fetch, reporter=reporter)
    tree = renderer.resolve(options.image)
    entry = cache / "rootfs" / tree.cache_key()
    if not (entry / "manifest").is_file():
        _render_into_cache(renderer, tree, entry)
    else:
        reporter.detail(f"using cached rootfs {entry}")
    return entry / "rootfs", tree.manifest


def _render_into_cache(renderer: Renderer, tree: Node, entry: Path) -> None:
    entry.parent.mkdir(mode=0o700, exist_ok=True)
    with owned(lambda: Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent)),
               _remove_if_there) as temp:
        (temp / "rootfs").mkdir(mode=0o755)
        renderer.render(tree, StagedRootfs(root=temp / "rootfs"))
        (temp / "manifest").write_bytes(manifest.to_json_bytes(tree.manifest))
        try:
            os.rename(temp, entry)
        except OSError:
            if not (entry / "manifest").is_file():
                raise
            # Another run rendered the same image meanwhile: its copy is as good as ours.


def _remove_if_there(temp: Path) -> None:
    if temp.exists():  # not when renamed into place
        remove_tree(temp)


@contextmanager
def _scratch(cache: Path) -> Iterator[Path]:
    """A private directory for one run's rootfs copy (beside the cache, for reflinks)."""
    (cache / "run").mkdir(mode=0o700, exist_ok=True)
    with owned(lambda: Path(tempfile.mkdtemp(prefix="run-", dir=cache / "run")),
               remove_tree) as path:
        yield path


def _copy_tree(source: Path, dest: Path) -> None:
    proc = subprocess.run(["cp", "-a", "--reflink=auto", "--", str(source), str(dest)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or ["cp failed"]
        raise SandboxError(f"cannot copy the cached rootfs {source}: {detail[0]}")


def _spec(root: Path, image: ImageManifest, app: App, options: RunOptions,
          scratch: Path) -> SandboxSpec:
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
        stdin=options.stdin,
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


def _binds(app: App, options: RunOptions, scratch: Path) -> tuple[Bind, ...]:
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


def empty_volume(scratch: Path, name: str) -> Path:
    """A new empty directory ``scratch/volumes/NAME``, made relative to directory fds with
    O_NOFOLLOW one checked component at a time: NAME is one ACName (never ``..`` nor a
    path), a symlink planted on the way is an error, and an existing one (a duplicate mount
    point) is refused rather than shared."""
    if not is_ac_name(name):
        raise SandboxError(f"mount point name {name!r} is not an ACName ({AC_NAME_RULE})")
    fd = os.open(scratch, _DIR)
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
                raise SandboxError(f"cannot make the volume for mount point {name!r}: "
                                   f"{scratch / part} is not a plain directory "
                                   f"({e.strerror})") from None
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return scratch / "volumes" / name


def _handlers(app: App, event: str) -> tuple[tuple[str, ...], ...]:
    return tuple(h.exec for h in app.event_handlers if h.name == event)


def _run(base: SandboxSpec, argv: tuple[str, ...],
         on_output: Callable[[str], None]) -> SandboxResult:
    return run_sandboxed(replace(base, argv=argv), on_output)
