"""RUN --mount (execute stage): from the instruction's mounts to what the sandbox mounts.

Bind sources are resolved as COPY resolves its sources (never out of the context) and shown
as the listing taken now, without what the ignore file excludes (acbuild.build.bindview),
or inside a stage's rootfs with chroot semantics; cache directories are taken from the
mount cache and locked for the step; secrets are read once into sealed memfds. Everything
is released when the step ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from acbuild.acfile.context import IGNORE_FILE, BuildContext, ContextSource, has_glob
from acbuild.acfile.instructions import Run, RunMount
from acbuild.acfile.runmount import SECRETS_DIR
from acbuild.build.bindview import ContextView, check_budget, context_view
from acbuild.cache.mountcache import MountCache, Owner
from acbuild.cache.statcache import StatCache
from acbuild.errors import AcbuildError, BuildError
from acbuild.fs.beneath import ESCAPES, open_beneath
from acbuild.fs.securepath import PathError, relpath_in, safe_join
from acbuild.sandbox.runstep import RunContext, step_identity
from acbuild.sandbox.sandbox import SecretFile, TreeMount
from acbuild.sandbox.sandbox_init import MAX_SECRETS_BYTES

MAX_SECRET = 1 << 20  # bytes of one secret (BuildKit allows 500 KiB)
MIN_REDACTED = 4  # shorter lines of a secret are too common to hide from the output


@dataclass(frozen=True, slots=True, kw_only=True)
class MountInputs:
    """What a build supplies to its RUN mounts."""

    context: BuildContext
    cache: MountCache | None  # None: the build has no cache directory
    secrets: Mapping[str, Path]  # --secret id=ID,src=FILE
    stage_root: Callable[[str], Path]  # a stage's rootfs by name (built when asked)
    notice: Callable[[str], None] = lambda message: None  # e.g. waiting for a lock
    key_check: KeyCheck | None = None  # a cached step's: its key must cover what it shows
    # What the build itself writes to while steps run (its log file, its cache directory):
    # a bind must not show one, or every step would see the context change under it.
    written: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyCheck:
    """How a step with a cache key checks, before it runs, that the key hashed what its
    context binds show: ``holds`` gets their digests, by the mount's position in the RUN
    (statcache.run_inputs ``shown``)."""

    stat_cache: StatCache
    holds: Callable[[Mapping[int, str]], bool]


@contextlib.contextmanager
def prepared(instruction: Run, ctx: RunContext, inputs: MountInputs) -> Iterator[RunContext]:
    """``ctx`` with the step's mounts, secrets and redactions, valid until the end."""
    if not instruction.mounts:
        yield ctx
        return
    with contextlib.ExitStack() as stack:
        mounts: list[TreeMount] = []
        views: dict[int, ContextView] = {}  # by the mount's position in the instruction
        secrets: list[SecretFile] = []
        redact: set[str] = set()
        # Cache locks are taken in one order, by id, in every step of every build: two
        # steps each holding one the other waits for cannot happen.
        for index, mount in sorted(enumerate(instruction.mounts),
                                   key=lambda m: (m[1].kind != "cache", m[1].cache_id)):
            try:
                if mount.kind == "secret":
                    found = _secret(mount, inputs, instruction, ctx, stack)
                    if found is not None:
                        secrets.append(found[0])
                        redact.update(found[1])
                    continue
                target = _target(ctx.rootfs.root, mount.target)
                if mount.kind == "cache":
                    mounts.append(_cache(mount, target, inputs, instruction, ctx, stack))
                elif mount.from_stage is not None:
                    mounts.append(_stage_bind(mount, target, inputs))
                else:
                    views[index] = _context_bind(mount, target, inputs.context,
                                                 inputs.written)
                    mounts.append(views[index].mount)
            except AcbuildError as e:
                e.span = e.span or instruction.span
                raise
        if sum(os.fstat(x.fd).st_size for x in secrets) > MAX_SECRETS_BYTES:
            raise BuildError(f"the secrets of one RUN take more than "
                             f"{MAX_SECRETS_BYTES >> 20} MiB", span=instruction.span)
        keyed: dict[int, dict[str, str]] = {}  # a cached step's: the file digests it keyed
        try:
            if views:
                check_budget(list(views.values()))
                keyed = _check_key(views, inputs)
        except AcbuildError as e:
            e.span = e.span or instruction.span
            raise
        yield dataclasses.replace(ctx, mounts=tuple(mounts), secrets=tuple(secrets),
                                  redact=tuple(sorted(redact, key=len, reverse=True)))
        try:
            for index, view in views.items():
                view.check_unchanged(inputs.context, keyed.get(index), None if
                                     inputs.key_check is None else inputs.key_check.stat_cache)
        except AcbuildError as e:
            e.span = e.span or instruction.span
            raise


def _check_key(views: Mapping[int, ContextView],
               inputs: MountInputs) -> dict[int, dict[str, str]]:
    """A cached step runs only on what its key hashed: the key was taken when the build
    planned (maybe minutes ago), the listing now. Checking the listing, rather than the
    context once more after the step, also covers a file that came and went meanwhile.
    Returns the file digests of each view (by the mount's position) the check used."""
    check = inputs.key_check
    if check is None:
        return {}
    keyed = {index: view.file_digests(inputs.context, check.stat_cache)
             for index, view in views.items()}
    check.stat_cache.save()
    if not check.holds({index: view.digest(inputs.context, keyed[index])
                        for index, view in views.items()}):
        raise BuildError("the build context changed while the build used it: what this "
                         "step's --mount=type=bind shows is not what its cache key hashed",
                         hint="do not change the context during a build")
    return keyed


def _target(root: Path, target: str) -> str:
    """The target with the image's symlinks resolved inside the rootfs (as Docker does):
    the sandbox then makes and opens it refusing every symlink."""
    try:
        rel = relpath_in(root, safe_join(root, target, follow_final=True))
    except PathError as e:
        raise BuildError(f"RUN --mount target '{target}': {e.message}") from None
    secrets = SECRETS_DIR.strip("/")
    top = rel.split("/")[0]
    where = None if not rel else "/" + top if top in ("proc", "dev") else \
        SECRETS_DIR if rel == secrets or rel.startswith(secrets + "/") else ""
    if where != "":
        why = "the sandbox's own" if where else "the whole image"
        raise BuildError(f"RUN --mount target '{target}' leads to '{where or '/'}' through "
                         f"a symlink: {why}")
    return "/" + rel


# -- cache ------------------------------------------------------------------------------------


def _cache(mount: RunMount, target: str, inputs: MountInputs, instruction: Run,
           ctx: RunContext, stack: contextlib.ExitStack) -> TreeMount:
    who = step_identity(instruction, ctx)
    uid = who.uid if mount.uid is None else mount.uid
    gid = who.gid if mount.gid is None else mount.gid
    if not ctx.rootfs.privileged and (uid, gid) != (0, 0):
        raise BuildError(f"RUN --mount=type=cache owned by {uid}:{gid} needs a build as root: "
                         "a rootless build has only uid 0 inside")
    if inputs.cache is None:
        raise BuildError("RUN --mount=type=cache needs a cache directory, and this build "
                         "has none")
    try:
        data = stack.enter_context(inputs.cache.use(
            mount.cache_id, mount.sharing,
            Owner(uid=uid, gid=gid, mode=0o755 if mount.mode is None else mount.mode),
            on_wait=lambda: inputs.notice(f"waiting for cache mount '{mount.cache_id}' "
                                          f"(sharing={mount.sharing}): another step uses it")))
        st = os.lstat(data)
        # The helper (another process) reopens it by this real path, and mounts it only if
        # it is still the inode seen here through the cache's descriptor.
        real = Path(os.path.realpath(data))
    except OSError as e:
        raise BuildError(f"cache mount '{mount.cache_id}': {e.strerror or e}") from None
    return TreeMount(root=real.parent, rel=real.name, identity=(st.st_dev, st.st_ino),
                     is_dir=True, target=target, read_only=False)


# -- bind -------------------------------------------------------------------------------------


def _context_bind(mount: RunMount, target: str, context: BuildContext,
                  written: tuple[Path, ...]) -> ContextView:
    source = (mount.source or ".").lstrip("/") or "."
    if has_glob(source):
        raise BuildError(f"RUN --mount source '{mount.source}' is a glob; name one file or "
                         "directory")
    try:
        (found,) = context.resolve(source)
    except BuildError as e:
        # The context's messages are COPY's; the rule is the same, the instruction is not.
        raise BuildError(e.message.replace("COPY source", "RUN --mount source", 1),
                         hint=e.hint) from None
    if found.is_symlink:
        raise BuildError(f"RUN --mount source '{source}' is a symlink: name the file or "
                         "directory it points to")
    _refuse_own(context, found, source, written)
    try:
        return context_view(context, found, source, target)
    except OSError as e:  # an entry gone between listing and stat, a directory unreadable
        where = f" ({os.fsdecode(e.filename)})" if e.filename else ""
        raise BuildError(f"RUN --mount source '{source}': cannot list it{where}: "
                         f"{e.strerror or e}", hint="do not change the context during a "
                         "build") from None


def _refuse_own(context: BuildContext, found: ContextSource, source: str,
                written: tuple[Path, ...]) -> None:
    """A log file or cache directory of this build inside the source, not excluded: the
    step key would hash it while the build keeps writing to it."""
    top = context.root if found.rel == "." else context.root / found.rel
    for path in written:
        real = Path(os.path.realpath(path))
        if real != top and not real.is_relative_to(top):
            continue
        rel = real.relative_to(context.root).as_posix()
        if not context.is_ignored(rel, is_dir=real.is_dir()):
            raise BuildError(f"RUN --mount source '{source}' holds '{rel}', which this build "
                             "writes to while it runs (its log file or cache directory)",
                             hint=f"exclude it in {IGNORE_FILE}, or put it outside the "
                             "build context")


def _stage_bind(mount: RunMount, target: str, inputs: MountInputs) -> TreeMount:
    """A path of a stage's rootfs, its symlinks resolved inside that rootfs."""
    assert mount.from_stage is not None
    source = (mount.source or ".").lstrip("/") or "."
    root = inputs.stage_root(mount.from_stage)
    try:
        path = safe_join(root, source, follow_final=True)
        st = os.lstat(path)
        rel = relpath_in(root, path)
    except (PathError, OSError) as e:
        why = e.message if isinstance(e, PathError) else "not found"
        raise BuildError(f"RUN --mount source '{mount.source}' in stage "
                         f"'{mount.from_stage}': {why}") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise BuildError(f"RUN --mount source '{mount.source}' in stage '{mount.from_stage}' "
                         "is neither a file nor a directory")
    return TreeMount(root=root, rel=rel, identity=(st.st_dev, st.st_ino),
                     is_dir=stat.S_ISDIR(st.st_mode), target=target)


# -- secrets ----------------------------------------------------------------------------------


def _secret(mount: RunMount, inputs: MountInputs, instruction: Run, ctx: RunContext,
            stack: contextlib.ExitStack) -> tuple[SecretFile, set[str]] | None:
    """The secret as a sealed memfd, and the lines of it the output must not show; None
    when no source is given and it is not required. No message ever quotes its content."""
    assert mount.id is not None
    given = inputs.secrets.get(mount.id)
    if given is None and mount.source is None:
        if not mount.required:
            return None
        raise BuildError(f"RUN needs secret '{mount.id}', and none is given",
                         hint=f"build with --secret id={mount.id},src=FILE")
    uid = 0 if mount.uid is None else mount.uid
    gid = 0 if mount.gid is None else mount.gid
    if not ctx.rootfs.privileged and (uid, gid) != (0, 0):
        raise BuildError(f"secret '{mount.id}' owned by {uid}:{gid} needs a build as root: "
                         "a rootless build has only uid 0 inside")
    shown = str(given) if given is not None else f"{mount.source} (in the build context)"
    fd = _open_secret(given, mount, inputs.context, shown)
    try:
        data = _read_bounded(fd, mount.id, shown)
    finally:
        os.close(fd)
    memfd = os.memfd_create(f"secret-{mount.id}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    stack.callback(os.close, memfd)
    view = memoryview(data)
    while view:
        view = view[os.write(memfd, view):]
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    text = data.decode(errors="replace")
    lines = {line.strip() for line in (text, *text.splitlines())}
    return (SecretFile(fd=memfd, name=mount.id, mode=0o400 if mount.mode is None else mount.mode,
                       uid=uid, gid=gid),
            {line for line in lines if len(line) >= MIN_REDACTED})


def _open_secret(given: Path | None, mount: RunMount, context: BuildContext, shown: str) -> int:
    """A descriptor on the secret's file: a --secret path as given (the command line is the
    builder's own word); an Acfile's source= only beneath the context, no symlink followed
    (an Acfile must not be able to read the builder's files). Non-blocking, so a FIFO
    cannot hang the build; it must then be a regular file."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        if given is not None:
            fd = os.open(given, flags)
        else:
            assert mount.source is not None
            root = os.open(context.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fd = open_beneath(root, mount.source, flags)
            finally:
                os.close(root)
    except ValueError:
        raise BuildError(f"secret '{mount.id}': {shown} is outside the build context") from None
    except OSError as e:
        if given is None and e.errno in ESCAPES:
            raise BuildError(f"secret '{mount.id}': {shown} is a symlink or lies below one",
                             hint="name the file itself, or use --secret") from None
        raise BuildError(f"secret '{mount.id}': cannot open {shown}: "
                         f"{e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BuildError(f"secret '{mount.id}': {shown} is not a regular file")
    return fd


def _read_bounded(fd: int, secret_id: str, shown: str) -> bytes:
    chunks, total = [], 0
    try:
        while chunk := os.read(fd, 65536):
            total += len(chunk)
            if total > MAX_SECRET:
                raise BuildError(f"secret '{secret_id}': {shown} is larger than "
                                 f"{MAX_SECRET >> 10} KiB")
            chunks.append(chunk)
    except BlockingIOError:
        raise BuildError(f"secret '{secret_id}': {shown} cannot be read now") from None
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise BuildError(f"secret '{secret_id}': {shown} is a directory") from None
        raise BuildError(f"secret '{secret_id}': cannot read {shown}: {e.strerror}") from None
    return b"".join(chunks)
