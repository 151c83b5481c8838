"""Confinement: run one function of hostile input in a forked child under hard limits.

A template can make a single C-level call that runs for minutes or allocates gigabytes
(``'{:>999999999}'.format(1)``, ``'%0*d' % (10**9, 1)``, ``lipsum(10**8)``); no check in Python
and no alarm signal can interrupt it. A forked child (no new interpreter: a no-op rebuild stays
fast) under RLIMIT_AS and RLIMIT_CPU, killed by the parent after a wall-clock deadline, bounds
every such trick at once, and works from any thread. The child sends back its value, or the
AcfileError it raised, as JSON through a pipe and leaves with ``os._exit`` so it never runs the
parent's atexit handlers or flushes the parent's buffered stdio.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from acbuild.errors import AcfileError, Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    seconds: int  # wall clock, and CPU time
    memory: int  # bytes of address space the child may add to what it inherited


class LimitExceeded(Exception):
    """The child ran out of time or memory; ``what`` says which, for the caller's message."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what  # "time" or "memory"


_RESULT_BYTES = 256 << 20  # far above what a bounded render can send back
_PAGE = os.sysconf("SC_PAGE_SIZE")


def run_confined(work: Callable[[], str], limits: Limits) -> str:
    """``work()`` computed in a child; its AcfileError is raised here with the same span."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12 warns about fork in a threaded process; the child only computes and
        # writes to a pipe, it takes none of the locks other threads may hold.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        os.close(read_end)
        _child(work, write_end, limits)
    os.close(write_end)
    reaped = False
    try:
        data, timed_out = _collect(read_end, time.monotonic() + limits.seconds)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        reaped = True
    finally:
        os.close(read_end)
        if not reaped:  # ^C or another error while waiting: leave no child behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if timed_out or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU):
        raise LimitExceeded("time")
    return _decode(data, status)


def _collect(fd: int, deadline: float) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"", True
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks), False
        size += len(chunk)
        if size > _RESULT_BYTES:
            raise LimitExceeded("memory")
        chunks.append(chunk)


def _decode(data: bytes, status: int) -> str:
    try:
        reply = json.loads(data) if data else None
    except ValueError:
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("failed"), str):
        raise AcfileError(f"template rendering failed: {reply['failed']}")
    if not isinstance(reply, dict) or not os.WIFEXITED(status):
        # The child died without a word (killed by the kernel, or Python aborted when an
        # allocation failed deep inside): the one limit left that can do that is memory.
        raise LimitExceeded("memory")
    if "memory" in reply:
        raise LimitExceeded("memory")
    if "error" in reply:
        raise _error_from(reply["error"])
    value = reply.get("value")
    if not isinstance(value, str):
        raise LimitExceeded("memory")
    return value


def _child(work: Callable[[], str], fd: int, limits: Limits) -> None:  # pragma: no cover
    code = 1
    try:
        # ^C and SIGTERM reach the whole process group: the parent reports them; the child
        # only has to stop.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        _limit(limits)
        try:
            reply: dict[str, object] = {"value": work()}
        except AcfileError as e:
            reply = {"error": _error_to(e)}
        except MemoryError:
            reply = {"memory": True}
        # ensure_ascii: a lone surrogate (from a --var given as undecodable bytes) survives
        data = json.dumps(reply, ensure_ascii=True).encode("ascii")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        code = 0
    except BaseException as e:  # a bug of ours in the child: say what, if the pipe still works
        with contextlib.suppress(BaseException):
            os.write(fd, json.dumps({"failed": f"{type(e).__name__}: {e}"[:500]}).encode())
        code = 1
    finally:
        os._exit(code)


def _limit(limits: Limits) -> None:
    with open("/proc/self/statm", "rb") as f:
        inherited = int(f.read().split()[0]) * _PAGE
    cap = inherited + limits.memory
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime) + limits.seconds + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:  # a limit can only be lowered
        cpu = min(cpu, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1 if hard == resource.RLIM_INFINITY
                                             else max(cpu, hard)))


def _error_to(e: AcfileError) -> dict[str, object]:
    span = e.span
    return {
        "message": e.message,
        "hint": e.hint,
        "span": None if span is None else {
            "file": span.file, "line": span.line, "column": span.column,
            "length": span.length, "source_line": span.source_line,
        },
    }


def _error_from(raw: object) -> AcfileError:
    if not isinstance(raw, dict) or not isinstance(raw.get("message"), str):
        return AcfileError("template rendering failed")
    hint = raw.get("hint")
    span = raw.get("span")
    return AcfileError(
        raw["message"],
        hint=hint if isinstance(hint, str) else None,
        span=Span(**span) if isinstance(span, dict) else None,
    )
