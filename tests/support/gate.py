"""Test helper: a RUN step that waits for the test, not for a fixed time.

A step that must still be running while the test changes something (the build context, a
mapping) used to sleep for seconds it hoped were enough. A ``Gate`` is a ``sleep`` in the
step whose argument no other process on the machine has: the test waits until that sleep has
started (so the step got that far), does its change, and kills it (so the step goes on at
once). A gate the test never opens still ends, after ``LIMIT`` seconds.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass, field

LIMIT = 40  # seconds; below the 60 s the tests give a build


@dataclass(frozen=True, slots=True)
class Gate:
    token: str = field(default_factory=lambda: f"{LIMIT}.{secrets.randbelow(10**9):09d}")

    @property
    def cmd(self) -> str:
        """The shell command that waits at the gate (its status 0 once opened)."""
        return f"{{ sleep {self.token} || true; }}"

    def reached(self, timeout: float = 30.0) -> int:
        """Wait until the step is waiting at the gate; the waiting process's id."""
        argv = b"\0".join((b"sleep", self.token.encode())) + b"\0"
        deadline = time.monotonic() + timeout
        while True:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if f.read() == argv:
                            return int(pid)
                except OSError:
                    continue  # gone meanwhile
            assert time.monotonic() < deadline, f"the step never reached sleep {self.token}"
            time.sleep(0.01)

    def open(self) -> None:
        """Let the step go on, once it is waiting at the gate."""
        # SIGPIPE, which the shell does not report as it does SIGKILL's "Killed"
        os.kill(self.reached(), signal.SIGPIPE)
