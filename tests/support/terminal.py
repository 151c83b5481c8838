"""Running the CLI in a real pseudo-terminal and reading the screen a person would see
(pyte emulates the terminal: cursor movement, erasing, wrapping)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyte


@dataclass(frozen=True)
class Screen:
    code: int
    lines: tuple[str, ...]  # the screen's rows, right-stripped, trailing blank rows dropped
    history: tuple[str, ...]  # rows scrolled off the top
    raw: bytes  # every byte written to the terminal
    stdout: bytes  # what went to stdout (a pipe, not the terminal)

    @property
    def text(self) -> str:
        return "\n".join((*self.history, *self.lines))


def run_in_terminal(*args: str | Path, columns: int = 80, rows: int = 24,
                    cwd: Path | None = None, env: Mapping[str, str] | None = None,
                    timeout: float = 300,
                    watch: Callable[[list[str]], None] | None = None,
                    stdout_tty: bool = False) -> Screen:
    """``watch`` sees the screen's rows after every chunk the program writes; stdout is a
    pipe unless ``stdout_tty`` (then the result is on the screen and ``stdout`` empty)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    # A UTF-8 terminal unless ``env`` says otherwise, whatever the locale tests run under.
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("CI", "NO_COLOR", "LC_ALL", "LC_CTYPE", "PYTHONUTF8")}
    full_env.update({"TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows),
                     "LANG": "C.UTF-8", **(env or {})})
    proc = subprocess.Popen([sys.executable, "-m", "acbuild", *map(str, args)], cwd=cwd,
                            env=full_env, stdin=follower, stderr=follower,
                            stdout=follower if stdout_tty else subprocess.PIPE)
    os.close(follower)
    screen = pyte.HistoryScreen(columns, rows, history=10000)
    stream = pyte.ByteStream(screen)
    raw = bytearray()
    deadline = time.monotonic() + timeout
    exited = False
    while True:
        # Once the program has exited, what it wrote between the last select and the poll
        # is still in the terminal: read it all before stopping (on a loaded machine that
        # gap can hold the last lines, such as "RUN failed …").
        ready, _, _ = select.select([leader], [], [], 0 if exited else 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            raw += data
            stream.feed(data)
            if watch is not None:
                watch([line.rstrip() for line in screen.display])
        elif exited:
            break
        else:
            exited = proc.poll() is not None
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"acbuild-py {args} did not finish in {timeout} s")
    stdout = b""
    if proc.stdout is not None:
        with proc.stdout:
            stdout = proc.stdout.read()
    code = proc.wait()
    os.close(leader)
    history = tuple("".join(c.data for c in row.values()).rstrip() if isinstance(row, dict)
                    else "".join(row[x].data for x in range(columns)).rstrip()
                    for row in screen.history.top)
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return Screen(code=code, lines=tuple(lines), history=history, raw=bytes(raw),
                  stdout=stdout)


def read_until_closed(leader: int, proc: subprocess.Popen[bytes], *,
                      timeout: float = 120.0) -> bytes:
    """All a program writes to its terminal (``leader``, the pty's other side) until it
    closes it; ``proc`` is killed if it writes nothing for ``timeout`` seconds."""
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the program closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
