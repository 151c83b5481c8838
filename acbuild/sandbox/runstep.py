"""RUN step (execute stage): one RUN instruction run in the sandbox against a staged rootfs.

The image's ENV, WORKDIR and USER apply unless the step overrides them; output streams live
to the reporter and into the build log; a failure carries the last lines and the log's path.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from acbuild.acfile.instructions import Run
from acbuild.errors import AcbuildError, BuildError, SandboxError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.manifest import ImageManifest
from acbuild.image.users import Identity, resolve_user
from acbuild.report import Reporter, StepInfo
from acbuild.sandbox.limits import DEFAULT_PIDS, Limits, default_memory
from acbuild.sandbox.sandbox import SandboxSpec, SecretFile, TreeMount, run_sandboxed
from acbuild.signals import terminate_as_exit

RUN_TAIL_LINES = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    rootfs: StagedRootfs
    manifest: ImageManifest
    epoch: int
    log: TextIO | None = None
    log_path: Path | None = None
    # Limits already reported as not enforceable here: each is warned about once a build.
    warned: set[str] = field(default_factory=set)
    mounts: tuple[TreeMount, ...] = ()  # RUN --mount=type=bind|cache, prepared and locked
    secrets: tuple[SecretFile, ...] = ()
    # Text no output line may show (a secret's lines): the sandbox replaces it with ***
    # before the reporter, the log and an error's last lines see any of it.
    redact: tuple[str, ...] = ()


def step_identity(instruction: Run, ctx: RunContext) -> Identity:
    """Whom the step runs as: RUN --user, else the image's USER and GROUP, else root."""
    app = ctx.manifest.app
    user = instruction.user or (app.user if app else "0")
    group = None if instruction.user else (app.group if app else None)
    try:
        identity = resolve_user(ctx.rootfs.root, user, group)
    except AcbuildError as e:
        raise BuildError(f"RUN: {e.message}", span=instruction.span) from None
    if not ctx.rootfs.privileged and (identity.uid, identity.gid) != (0, 0):
        raise BuildError(
            f"RUN as user '{user}' (uid {identity.uid}, gid {identity.gid}) needs a build as "
            "root: a rootless build runs programs as uid 0 only",
            span=instruction.span,
            hint="build as root, or run this step with RUN --user=0 (USER sets the app's "
                 "user and applies to the RUN steps after it)",
        )
    return identity


def sandbox_spec(instruction: Run, ctx: RunContext) -> SandboxSpec:
    """What the sandbox runs for this step: the image's app settings, then the step's own."""
    app = ctx.manifest.app
    env = {e.name: e.value for e in app.environment} if app else {}
    env.update(instruction.env)
    identity = step_identity(instruction, ctx)
    env.setdefault("HOME", identity.home)
    return SandboxSpec(
        rootfs=ctx.rootfs.root,
        argv=instruction.argv,
        env=tuple(env.items()),
        workdir=instruction.workdir or (app.working_directory if app else None) or "/",
        make_workdir=True,
        uid=identity.uid,
        gid=identity.gid,
        network=instruction.network,
        timeout=instruction.timeout,
        source_date_epoch=ctx.epoch,
        limits=run_limits(instruction),
        tmpfs_tmp=False,  # the image's /tmp, as in Docker: what RUN does there is kept
        mounts=ctx.mounts,
        secrets=ctx.secrets,
        redact=ctx.redact,
    )


def run_limits(instruction: Run) -> Limits:
    """The step's --pids and --memory, else the defaults; 0 (max) lifts a limit."""
    pids = DEFAULT_PIDS if instruction.pids is None else instruction.pids
    memory = default_memory() if instruction.memory is None else instruction.memory
    return Limits(pids=pids or None, memory=memory or None)


def run_step(instruction: Run, ctx: RunContext, reporter: Reporter, info: StepInfo) -> None:
    spec = sandbox_spec(instruction, ctx)
    tail: deque[str] = deque(maxlen=RUN_TAIL_LINES)

    def on_output(line: str) -> None:
        tail.append(line)
        if ctx.log is not None:
            ctx.log.write(f"[{info.number}/{info.total}] {line}\n")
        reporter.step_output(info, line)

    try:
        # SIGTERM unwinds like Ctrl-C, so the sandbox and the work directory are cleaned up.
        with terminate_as_exit():
            outcome = run_sandboxed(spec, on_output,
                                    on_partial=lambda text: reporter.step_partial(info, text))
    except SandboxError as e:
        e.span = e.span or instruction.span  # the missing program is this line's fault
        raise
    # Device nodes the program made: records from now on, never nodes on the host.
    ctx.rootfs.absorb_nodes()
    missing = [name for name in outcome.unenforced if name not in ctx.warned]
    if missing:
        ctx.warned.update(missing)
        what = " and ".join({"pids": "process", "memory": "memory"}[n] for n in missing)
        reporter.warning(f"RUN {what} limit not enforced: no cgroup can be made here "
                         "(see Known gaps in docs/security.md)", instruction.span)
    if outcome.timed_out:
        message = f"RUN timed out after {instruction.timeout:g}s"
    elif outcome.exit_status != 0:
        message = f"RUN failed with exit status {outcome.exit_status}"
    else:
        return
    hint = None
    if outcome.out_of_memory and spec.limits.memory:
        message += (f": out of memory (the step's limit is {spec.limits.memory >> 20} MiB; "
                    "raise it with RUN --memory=SIZE)")
    if tail:
        hint = "last lines of output:\n" + "\n".join(f"      {line}" for line in tail)
    if ctx.log_path is not None:
        hint = (hint + "\n    " if hint else "") + f"full log: {ctx.log_path}"
    raise BuildError(message, span=instruction.span, hint=hint)
