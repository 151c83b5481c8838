"""Schedule: a plan's stages as a DAG, each built as soon as the stages it copies from are
done, on a bounded pool of threads (as BuildKit schedules its vertices).

The work of a stage is kernel and subprocess work (copies, the sandbox), so threads run
stages side by side despite the GIL. A failure stops the rest: no new step starts, and the
sandboxes still running are told to stop (SIGTERM to their helpers, which kill everything in
the namespace); then the first error is raised. Ctrl-C and SIGTERM, which Python delivers to
the main thread only, do the same before they unwind the build.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from acbuild.errors import BuildError, Span
from acbuild.plan.plan import Plan, Stage, stage_reads
from acbuild.report import Field, Reporter, StepInfo
from acbuild.signals import deferred

_POLL = 0.1  # how often a cancelled build looks for sandboxes that started meanwhile


class Cancelled(BuildError):
    """Another stage failed (or the build was interrupted): this one stops between steps.
    Never shown: the error that caused it is."""


def default_jobs() -> int:
    return len(os.sched_getaffinity(0))


def stage_needs(plan: Plan) -> dict[int, frozenset[int]]:
    """Stage index -> the indexes of the stages it reads (COPY --from, RUN --mount from=)."""
    return {stage.index: frozenset(
        plan.stage_named(name).index
        for _, name, _ in stage_reads([step.instruction for step in stage.steps]))
        for stage in plan.stages}


def run_stages(stages: Sequence[Stage], needs: dict[int, frozenset[int]],
               run: Callable[[Stage], None], *, jobs: int, cancel: threading.Event) -> None:
    """``run`` every stage once all it needs have run, at most ``jobs`` at a time. One
    stage, or one job, runs in this thread as before: nothing to schedule."""
    if jobs <= 1 or len(stages) <= 1:
        for stage in stages:
            run(stage)
        return
    waiting = list(stages)
    done: set[int] = set()
    running: dict[Future[None], Stage] = {}
    failure: BaseException | None = None
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="acbuild-stage")
    try:
        while waiting or running:
            if failure is None:
                for stage in [s for s in waiting if needs[s.index] <= done]:
                    waiting.remove(stage)
                    running[pool.submit(run, stage)] = stage
            if not running:
                break  # a failure left stages waiting that will now never start
            finished, _ = wait(running, timeout=_POLL if failure else None,
                               return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                error = future.exception()
                if error is None:
                    done.add(stage.index)
                elif failure is None:
                    failure = error
                    cancel.set()
            if cancel.is_set():
                stop_sandboxes()
    except BaseException:
        # Ctrl-C or SIGTERM in this thread: stop the workers before the stack unwinds (a
        # second signal waits until they have, then ends the build as usual).
        cancel.set()
        with deferred():
            while running:
                stop_sandboxes()
                finished, _ = wait(running, timeout=_POLL)
                for future in finished:
                    running.pop(future)
        raise
    finally:
        pool.shutdown(wait=True)
    if failure is not None:
        raise failure


def stop_sandboxes() -> None:
    """SIGTERM to each sandbox helper this process started (its children whose command
    line names acbuild/sandbox/sandbox_init.py, after the helper's own text). A pidfd pins
    the process while it is checked, so a reused pid is never signalled."""
    me = os.getpid()
    with contextlib.suppress(OSError):
        names = os.listdir("/proc")
        for name in names:
            if not name.isdigit():
                continue
            try:
                fd = os.pidfd_open(int(name))
            except OSError:
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                if ppid != me:
                    continue
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                if any(arg.endswith(b"sandbox_init.py") for arg in argv[:7]):
                    signal.pidfd_send_signal(fd, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                pass
            finally:
                os.close(fd)


class LockedReporter:
    """Passes events on one at a time: steps of several stages report from their threads,
    and each line a reporter writes must stay whole."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self._lock = threading.RLock()

    def step_started(self, step: StepInfo) -> None:
        with self._lock:
            self.inner.step_started(step)

    def step_output(self, step: StepInfo, line: str) -> None:
        with self._lock:
            self.inner.step_output(step, line)

    def step_partial(self, step: StepInfo, text: str) -> None:
        with self._lock:
            self.inner.step_partial(step, text)

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False,
                      source: str | None = None) -> None:
        with self._lock:
            self.inner.step_finished(step, seconds, cached=cached, source=source)

    def progress(self, what: str, done: int, total: int | None) -> None:
        with self._lock:
            self.inner.progress(what, done, total)

    def info(self, message: str) -> None:
        with self._lock:
            self.inner.info(message)

    def detail(self, message: str) -> None:
        with self._lock:
            self.inner.detail(message)

    def warning(self, message: str, span: Span | None = None) -> None:
        with self._lock:
            self.inner.warning(message, span)

    def summary(self, fields: tuple[Field, ...]) -> None:
        with self._lock:
            self.inner.summary(fields)
