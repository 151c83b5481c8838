"""Running documents as a new reader would: their fenced blocks, a fresh copy of the checkout,
a clean environment and one bash for the whole document."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.conftest import REPO

_FENCE = re.compile(r"^( *)```(\S*)\s*$")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where this interpreter's scripts are: the acbuild-py under test (not one the caller's PATH
# happens to find first).
INTERPRETER_BIN = Path(sys.executable).parent


def clean_env(home: Path, *first: Path) -> dict[str, str]:
    """A new user's environment: the system PATH behind the directories ``first``, a new
    HOME, and nothing of the caller's."""
    path = os.pathsep.join([*map(str, first), SYSTEM_PATH])
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    kind: str
    line: int  # of the opening fence, 1-based
    body: str


def blocks(text: str) -> tuple[list[Block], list[int]]:
    """The fenced blocks of a Markdown text, and the lines where indented code blocks start."""
    fenced: list[Block] = []
    indented: list[int] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if m := _FENCE.match(lines[i]):
            start, indent = i, len(m[1])
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            body = "".join(line[indent:] + "\n" for line in lines[start + 1:i])
            fenced.append(Block(kind=m[2], line=start + 1, body=body))
        elif (lines[i].startswith(("    ", "\t")) and lines[i].strip()
              and (i == 0 or not lines[i - 1].strip())):
            indented.append(i + 1)
        i += 1
    return fenced, indented


def checkout_copy(dest: Path) -> Path:
    """The files a fresh clone of this working tree has: tracked and new ones, not ignored
    ones (no .venv, no built hello, no images), so a document must make what it uses."""
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO / name
        if not os.path.lexists(src):  # deleted in the working tree, not yet committed
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name, follow_symlinks=False)
    return dest


class Shell:
    """One bash for a whole document, like a reader's terminal: variables, ``cd`` and
    background jobs carry over from one command to the next. The script arrives on its own
    descriptor, so commands get /dev/null as stdin and cannot swallow the next command."""

    def __init__(self, cwd: Path, env: Mapping[str, str]) -> None:
        self._marker = f"__docs_done_{secrets.token_hex(8)}__".encode()
        self._done = re.compile(rb"\n" + re.escape(self._marker) + rb" (\d+)\n")
        read, write = os.pipe()
        self._proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc", f"/dev/fd/{read}"], pass_fds=(read,),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=cwd, env=dict(env), start_new_session=True)
        os.close(read)
        self._script = os.fdopen(write, "w")
        self._pending = b""

    def run(self, command: str, timeout: float = 300) -> tuple[int, str]:
        """Run ``command``; its exit status and its output (stdout and stderr together)."""
        self._script.write(f"{command}\nprintf '\\n%s %d\\n' {self._marker.decode()} \"$?\"\n")
        self._script.flush()
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not (done := self._done.search(self._pending)):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no end after {timeout:.0f}s: {command}\n"
                                     + self._pending.decode(errors="replace"))
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise AssertionError(f"bash ended during: {command}\n"
                                     + self._pending.decode(errors="replace"))
            self._pending += chunk
        out, self._pending = self._pending[:done.start()], self._pending[done.end():]
        return int(done[1]), out.decode(errors="replace")

    def close(self) -> None:
        # A document that failed half-way leaves its server and gpg-agent running: stop them.
        try:
            self._script.write("gpgconf --kill all >/dev/null 2>&1\nexit 0\n")
            self._script.close()
        except OSError:
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # what it left in the background
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        assert self._proc.stdout is not None
        self._proc.stdout.close()

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def matches(expected: tuple[str, ...], actual: list[str]) -> bool:
    parts = []
    for e in expected:
        if e == "…":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*".join(map(re.escape, e.split("…"))) + r"\n")
    return re.fullmatch("".join(parts), "".join(a + "\n" for a in actual)) is not None
