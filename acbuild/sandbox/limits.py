"""Execute stage, sandbox: limits on the processes and memory of one sandboxed program.

A fork bomb or a runaway build step must not take the host down. RLIMIT_NPROC does not bind
uid 0 of the host (the sandbox's root in a root build), so limits come from a cgroup made
for the run: cgroup v2 where the builder's own cgroup delegates the pids and memory
controllers, else the v1 pids and memory hierarchies when they are writable (root). Without
a cgroup the process limit falls back to RLIMIT_NPROC, which counts per user namespace and
so binds the rootless sandbox's uid 0; memory then stays unlimited, and the caller is told.

Each cgroup is removed once the run is over, after killing anything still in it, also when
the run ends by an exception (Ctrl-C, SIGTERM turned into an exception by the caller); the
cgroups of a builder killed with SIGKILL are removed by the next run that makes one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

DEFAULT_PIDS = 4096
# The sandbox's two helper processes (sandbox_init's S and I) run in the cgroup too.
HELPERS = 2
MIN_DEFAULT_MEMORY = 2 << 30  # defaults must let a compiler or apt-get run
_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    pids: int | None = None  # at most this many processes and threads; None: no limit
    memory: int | None = None  # bytes of memory (and swap, where the kernel counts it)


def default_memory() -> int:
    """Half the machine's memory, but at least 2 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return max(MIN_DEFAULT_MEMORY, int(line.split()[1]) * 1024 // 2)
    except (OSError, ValueError, IndexError):
        pass
    return MIN_DEFAULT_MEMORY


@dataclass(slots=True)
class CgroupJail:
    """The cgroups of one run: ``add`` puts a process in them (its children follow)."""

    limits: Limits
    made: list[Path] = field(default_factory=list)
    enforced: set[str] = field(default_factory=set)  # "pids", "memory"

    def __enter__(self) -> CgroupJail:
        wanted = {k for k, v in (("pids", self.limits.pids), ("memory", self.limits.memory))
                  if v is not None}
        if wanted:
            name = f"acbuild-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                self._make(name, wanted)
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def add(self, pid: int) -> None:
        for path in self.made:
            (path / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        """Kill what is left in the cgroups, then remove them (newest first)."""
        while self.made:
            path = self.made.pop()
            _empty_and_remove(path)

    def _make(self, name: str, wanted: set[str]) -> None:
        own = _own_cgroups()
        for controller in ("memory", "pids"):
            parent = _v1_parent(controller, own.get(controller))
            if parent is not None:
                _sweep(parent)
        unified = _v2_parent(own.get(""), wanted)
        if unified is not None:
            _sweep(unified)
            path = unified / name
            path.mkdir(mode=0o755)
            self.made.append(path)
            self._write(path, "pids.max", self._pids(), "pids")
            self._write(path, "memory.max", self.limits.memory, "memory")
            return
        for controller in sorted(wanted):
            parent = _v1_parent(controller, own.get(controller))
            if parent is None:
                continue
            path = parent / name
            try:
                path.mkdir(mode=0o755)
            except OSError:
                continue
            self.made.append(path)
            if controller == "pids":
                self._write(path, "pids.max", self._pids(), "pids")
            else:
                self._write(path, "memory.limit_in_bytes", self.limits.memory, "memory")
                # Swap too where the kernel accounts it, or the limit only moves pages out.
                self._write(path, "memory.memsw.limit_in_bytes", self.limits.memory, None)

    def _pids(self) -> int | None:
        return None if self.limits.pids is None else self.limits.pids + HELPERS

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer ended a process of the run (read before close)."""
        for path in self.made:
            for name in ("memory.events", "memory.oom_control"):  # v2, v1
                try:
                    text = (path / name).read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and value.strip() not in ("", "0"):
                        return True
        return False

    def _write(self, path: Path, name: str, value: int | None, marks: str | None) -> None:
        if value is None:
            return
        try:
            (path / name).write_text(str(value))
        except OSError:
            return
        if marks is not None:
            self.enforced.add(marks)


def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path ("" for the v2 hierarchy)."""
    found: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            found[c] = path
    return found


def _v2_parent(own: str | None, wanted: set[str]) -> Path | None:
    """Our v2 cgroup when it is writable and hands the wanted controllers to children; for
    root, else the hierarchy's root (a systemd session scope delegates nothing)."""
    if own is None:
        return None
    for mount in (_CGROUP_ROOT, _CGROUP_ROOT / "unified"):
        if not (mount / "cgroup.controllers").is_file():
            continue
        for parent in (mount / own.lstrip("/"), mount) if os.geteuid() == 0 else (
                mount / own.lstrip("/"),):
            try:
                delegated = set((parent / "cgroup.subtree_control").read_text().split())
            except OSError:
                continue
            if wanted <= delegated and os.access(parent, os.W_OK):
                return parent
    return None


def _v1_parent(controller: str, own: str | None) -> Path | None:
    if own is None:
        return None
    mount = _CGROUP_ROOT / controller
    if not (mount / "cgroup.procs").is_file():
        return None
    parent = mount / own.lstrip("/")
    return parent if os.access(parent, os.W_OK) else None


def _sweep(parent: Path) -> None:
    """Remove the cgroups of runs whose builder is gone (a SIGKILLed build leaves its own)."""
    try:
        names = [p.name for p in parent.iterdir() if p.name.startswith("acbuild-")]
    except OSError:
        return
    for name in names:
        pid = name.split("-")[1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _empty_and_remove(parent / name)


def _empty_and_remove(path: Path) -> None:
    deadline = time.monotonic() + 5.0
    while True:
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                return  # left for the leftovers report; nothing else to do
        time.sleep(0.02)
