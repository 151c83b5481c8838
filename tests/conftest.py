"""Fixtures shared across test modules."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gpghelp import Keys, make_keys

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


@pytest.fixture(scope="session")
def gpgkeys() -> Iterator[Keys]:
    """Throwaway GnuPG keys (tests.support.gpghelp), made once: a few seconds each time.
    Tests sign and verify with them and never change the key rings."""
    yield from make_keys()


@pytest.fixture
def hello_context(tmp_path: Path, hello_binary: Path) -> Path:
    """A copy of the hello example with its program built, in a fresh directory."""
    ctx = tmp_path / "hello"
    shutil.copytree(EXAMPLES / "hello", ctx)
    shutil.copy2(hello_binary, ctx / "hello")
    return ctx


def _mounted_beneath(path: Path) -> bool:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
        return any(line.split()[4].startswith(prefix) for line in info)


def _remove_tree(path: Path) -> None:
    """Remove a test's directory, including read-only directories a build left behind; a
    mount leaked beneath it is left alone, since removing through it would delete the mounted
    tree's files."""
    if _mounted_beneath(path):
        return

    def writable_and_retry(func: object, name: str, _exc: object) -> None:
        parent = os.path.dirname(name)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
        if os.path.isdir(name) and not os.path.islink(name):
            shutil.rmtree(name, onerror=writable_and_retry)
        else:
            os.unlink(name)

    shutil.rmtree(path, onerror=writable_and_retry)


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
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
    yield
    # Every test's builds fill these caches and stores; kept for the whole run (pytest's
    # default) they came to gigabytes and once filled the CI machine's disk.
    _remove_tree(home)


# Minutes-long tests (the Debian quickstart, the docs' CI recipes, a cold Go build, the
# documents run end to end) first: under pytest -n (.ci/run) one of them started last would
# keep its worker busy for a minute or two after the others ran out of tests. A stable sort,
# so the order within a file stays as written (quickstart's rkt part uses what its console
# part built).
_LONG_FILES = ("tests/test_quickstart.py", "tests/test_docs_setup.py",
               "tests/build/test_goaci.py", "tests/test_docs.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in _LONG_FILES)
