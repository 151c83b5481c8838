"""Go modules for tests: the examples copied into a git repository with a fixed commit, and
the environment that keeps `go` offline and its build cache shared across a session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO

GO_EXAMPLES = REPO / "examples"
# Kept between runs (Go's build cache is safe to share; the day's mmdebstrap output too).
TEST_CACHE = Path(os.environ.get("ACBUILD_TEST_CACHE", "/var/tmp/acbuild-py-test-cache"))
COMMIT_DATE = "2024-03-01T12:00:00Z"
COMMIT_EPOCH = 1709294400


def go_missing() -> str | None:
    if shutil.which("go") is None:
        return "no Go toolchain (apt-get install golang-go)"
    if shutil.which("git") is None:
        return "git is not installed"
    return None


def go_environ(gocache: Path | None = None) -> dict[str, str]:
    """Offline: no module proxy, no checksum database; a build cache shared between runs
    unless one is given (test_goaci proves a cold cache gives the same image)."""
    return {"GOCACHE": str(gocache or TEST_CACHE / "go-build"), "GOPROXY": "off",
            "GOFLAGS": "", "GONOSUMDB": "*", "GOTOOLCHAIN": "local"}


def git_module(source: Path, dest: Path, *, tag: str | None = "v1.2.3") -> Path:
    """A copy of source as a git repository with one commit at COMMIT_DATE (and a tag)."""
    shutil.copytree(source, dest)
    env = {**os.environ, "GIT_AUTHOR_DATE": COMMIT_DATE, "GIT_COMMITTER_DATE": COMMIT_DATE,
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "import"],
                 *([["tag", tag]] if tag else [])):
        subprocess.run(["git", *args], cwd=dest, env=env, check=True, capture_output=True)
    return dest


def write_module(dest: Path, module: str, files: dict[str, str]) -> Path:
    """A module from text: go.mod for `module` plus the files given (path -> content)."""
    dest.mkdir(parents=True)
    (dest / "go.mod").write_text(f"module {module}\n\ngo 1.19\n")
    for rel, text in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    return dest


MAIN = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("%s") }\n'
