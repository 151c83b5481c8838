"""Fixtures shared across test modules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "Acfiles"


@pytest.fixture(scope="session")
def hello_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hello example's static C program, compiled once per test session."""
    out = tmp_path_factory.mktemp("hello") / "hello"
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(out), str(EXAMPLES / "hello" / "hello.c")],
        check=True,
    )
    return out


@pytest.fixture
def hello_context(tmp_path: Path, hello_binary: Path) -> Path:
    """A copy of the hello example with its program built, in a fresh directory."""
    ctx = tmp_path / "hello"
    shutil.copytree(EXAMPLES / "hello", ctx)
    shutil.copy2(hello_binary, ctx / "hello")
    return ctx


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own HOME and cache, state and config directories, as a fresh user
    would: builds cache by default, and nothing may leak between tests or into ~/.cache. The
    caller's GnuPG home, trust store, passphrase and epoch do not reach a test either."""
    home = tmp_path_factory.mktemp("xdg")
    (home / "home").mkdir()
    monkeypatch.setenv("HOME", str(home / "home"))
    for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, str(home / name.lower()))
    for name in ("GNUPGHOME", "ACBUILD_TRUST_STORE", "ACBUILD_PASSPHRASE", "SOURCE_DATE_EPOCH"):
        monkeypatch.delenv(name, raising=False)
