"""docs/quickstart.md, run for real: every ``$ `` command of its ```console blocks in order (and
of its ```shell blocks, the rkt part, when rkt is installed), in a git checkout of examples/,
with the documented ports swapped for free ones. Output is matched as tests/test_docs.py
does (``…`` is any text, a lone ``…`` line any lines).

The Debian base is the slow part: mmdebstrap's tarball is cached per day and per command line
in /var/tmp (a shim named mmdebstrap first on PATH), and so is Go's build cache.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from acbuild.sandbox.sandbox import sandbox_available
from tests.conftest import REPO
from tests.support.docrun import matches
from tests.support.gohelp import TEST_CACHE as CACHE
from tests.support.services import ORACLES, free_port, rkt_missing

DOC = REPO / "docs" / "quickstart.md"
DOC_PORTS = ("8081", "8082", "8083", "8084")
_BLOCK = re.compile(r"^```(console|shell)\n(.*?)^```", re.DOTALL | re.MULTILINE)
_PLAIN = re.compile(r"^```text\n(BEGIN .*?)^```", re.DOTALL | re.MULTILINE)

SHIM = """#!/bin/bash
# Test shim: mmdebstrap writing a tarball to stdout, cached per day and command line.
set -euo pipefail
case " $* " in *" - "*) ;; *) exec /usr/bin/mmdebstrap "$@" ;; esac
dir=%(cache)s
key=$(printf '%%s\\0' "$(date -u +%%F)" "$@" | sha256sum | cut -c1-24)
mkdir -p "$dir"
find "$dir" -maxdepth 1 -name 'mmdebstrap-*.tar' -mtime +1 -delete
if [ ! -s "$dir/mmdebstrap-$key.tar" ]; then
    /usr/bin/mmdebstrap "$@" >"$dir/.mmdebstrap-$key.$$"
    mv "$dir/.mmdebstrap-$key.$$" "$dir/mmdebstrap-$key.tar"
else
    echo "I: (test) using the cached $dir/mmdebstrap-$key.tar" >&2
fi
exec cat "$dir/mmdebstrap-$key.tar"
"""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the Debian quickstarts build as root"
    for tool in ("go", "mmdebstrap", "curl", "git", "tar"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    sandbox = sandbox_available()
    return None if sandbox is None else f"no sandbox: {sandbox}"


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@dataclass(frozen=True, slots=True)
class Command:
    kind: str  # console or shell
    line: int
    text: str
    output: tuple[str, ...]


def commands(text: str) -> list[Command]:
    found = []
    for block in _BLOCK.finditer(text):
        start = text.count("\n", 0, block.start()) + 2
        current: list[str] | None = None
        first = start
        for i, line in enumerate(block[2].splitlines()):
            if line.startswith("$ "):
                if current is not None:
                    found.append(Command(block[1], first, current[0], tuple(current[1:])))
                current, first = [line[2:]], start + i
            elif current is not None:
                current.append(line)
        if current is not None:
            found.append(Command(block[1], first, current[0], tuple(current[1:])))
    return found


@dataclass(frozen=True, slots=True)
class Checkout:
    where: Path
    env: dict[str, str]
    ports: dict[str, str]


def _git(where: Path, *args: str) -> None:
    date = "2024-03-01T12:00:00Z"
    env = {**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date,
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(["git", *args], cwd=where, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    """A checkout of examples/ in git, and the environment the commands run in."""
    top = tmp_path_factory.mktemp("quickstart")
    where = top / "checkout"
    shutil.copytree(REPO / "examples", where / "examples",
                    ignore=shutil.ignore_patterns("rootfs.tar", "*.aci"))
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "examples"),
                 ("tag", "v1.0.0")):
        _git(where, *args)
    shims = top / "shims"
    shims.mkdir()
    (shims / "mmdebstrap").write_text(SHIM % {"cache": CACHE})
    (shims / "mmdebstrap").chmod(0o755)
    home = top / "home"
    home.mkdir()
    # The interpreter's own bin directory first: the doc's commands call `acbuild-py`.
    path = [str(shims), str(Path(sys.executable).parent), os.environ["PATH"]]
    if (ORACLES / "bin" / "rkt").is_file():
        path.append(str(ORACLES / "bin"))
    env = {**os.environ, "PATH": os.pathsep.join(path), "HOME": str(home),
           "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(home / ".state"),
           "XDG_CONFIG_HOME": str(home / ".config"), "CI": "true", "COLUMNS": "100",
           "GOCACHE": str(CACHE / "go-build"), "GOPROXY": "off", "GOFLAGS": ""}
    ports = {doc: str(free_port()) for doc in DOC_PORTS}
    try:
        yield Checkout(where, env, ports)
    finally:
        _stop_leftovers(where, env)


def _stop_leftovers(where: Path, env: dict[str, str]) -> None:
    """Whatever a failed command left running is stopped, and rkt's pods collected."""
    for pid_file in where.glob("*.pid"):
        pid = pid_file.read_text().strip()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone, as it should be
        if str(where).encode() in cmdline or b"acbuild" in cmdline:  # ours, not a reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
    if (where / "rkt").exists():
        subprocess.run(["rkt", f"--dir={where / 'rkt'}", "gc", "--grace-period=0s"],
                       env=env, capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", "--one-file-system", str(where / "rkt")])


def run_commands(checkout: Checkout, kind: str) -> None:
    text = DOC.read_text()
    todo = [c for c in commands(text) if c.kind == kind]
    assert todo, f"no {kind} commands in {DOC.name}"
    for command in todo:
        line = command.text
        for doc, real in checkout.ports.items():
            line = line.replace(doc, real)
        proc = subprocess.run(["bash", "-c", line], cwd=checkout.where, env=checkout.env,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=600)
        where = f"{DOC.name}:{command.line}: $ {command.text}"
        output = proc.stdout
        for doc, real in checkout.ports.items():
            output = output.replace(real, doc)
        assert proc.returncode == 0, f"{where}\n{output}"
        actual = [row.rstrip() for row in output.splitlines()]
        if command.output:
            assert matches(command.output, actual), (
                f"{where}\nexpected:\n" + "\n".join(command.output) + "\nactual:\n"
                + "\n".join(actual))


def test_shown_acfiles_are_the_examples() -> None:
    shown = _PLAIN.findall(DOC.read_text())
    files = [REPO / "examples" / "debian" / name for name in ("Acfile", "Acfile.multistage")]
    real = ["".join(line for line in f.read_text().splitlines(keepends=True)
                    if not line.startswith("#")) for f in files]
    assert shown == real


def test_quickstart_console(checkout: Checkout) -> None:
    run_commands(checkout, "console")
    assert (checkout.where / "hello.aci").is_file()


@pytest.mark.skipif(rkt_missing() is not None, reason=str(rkt_missing()))
def test_quickstart_under_rkt(checkout: Checkout) -> None:
    if not (checkout.where / "py-hello.aci").is_file():
        pytest.skip("the console part did not build the images")
    run_commands(checkout, "shell")
    assert not (checkout.where / "rkt").exists()
