"""Option paths and XDG directories that run through a regular file (and other errors of the
environment) are one-line errors naming the path, for every verb; never exit 70."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from acbuild.cli.oserrors import from_os_error
from acbuild.fs.regular import open_regular
from tests.support.cli import acbuild

ACFILE = "BEGIN scratch\nNAME example.com/x\nLABEL version=1\n"


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    (tmp_path / "Acfile").write_text(ACFILE)
    (tmp_path / "file").write_text("a regular file\n")
    return tmp_path


def _cases(w: Path) -> list[tuple[tuple[str, ...], dict[str, str]]]:
    f = str(w / "file")
    acfile, out = str(w / "Acfile"), str(w / "x.aci")
    return [
        (("build", acfile, "-o", f"{f}/x.aci"), {}),
        (("build", acfile, "-o", out, "--cache-dir", f"{f}/cache"), {}),
        (("build", acfile, "-o", out, "--log-file", f"{f}/build.log"), {}),
        (("build", acfile, "-o", out), {"XDG_CACHE_HOME": f}),
        (("plan", acfile, "--cache-dir", f"{f}/c"), {}),
        (("cache", "list", "--cache-dir", f"{f}/c"), {}),
        (("cache", "prune", "--all", "--cache-dir", f"{f}/c"), {}),
        (("gc", "--keep", "1", "--store", f"{f}/store"), {}),
    ]


def test_paths_through_a_regular_file_are_one_line_errors(work: Path) -> None:
    for args, env in _cases(work):
        r = acbuild(*args, env=env, timeout=120)
        assert r.code == 1, (args, env, r.stderr)
        assert "internal error" not in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert f"'{work / 'file'}' is not a directory" in r.stderr, (args, r.stderr)


def test_the_message_names_the_file_in_the_way() -> None:
    error = from_os_error(NotADirectoryError(errno.ENOTDIR, "Not a directory",
                                             "/etc/passwd/x/y"))
    assert error is not None
    assert error.message == "'/etc/passwd' is not a directory (on the way to '/etc/passwd/x/y')"


def test_disk_full_and_permission_name_the_path() -> None:
    full = from_os_error(OSError(errno.ENOSPC, "No space left on device", "/out/x.aci"))
    denied = from_os_error(PermissionError(errno.EACCES, "Permission denied", "/root/x"))
    assert full is not None and full.message == "'/out/x.aci': no space left on device"
    assert denied is not None and denied.message == "'/root/x': permission denied"


def test_an_error_of_a_descriptor_is_a_message_not_a_second_error() -> None:
    # os.scandir(fd) and friends put the descriptor where the file name goes
    error = from_os_error(OSError(errno.ENOMEM, "Cannot allocate memory", 5))
    assert error is not None and error.message == "cannot allocate memory"


def test_errors_that_are_bugs_stay_internal() -> None:
    assert from_os_error(OSError(errno.EBADF, "Bad file descriptor")) is None
    assert from_os_error(OSError(errno.EINVAL, "Invalid argument", "/x")) is None


def test_a_fifo_read_as_a_file_is_the_users_error(tmp_path: Path) -> None:
    # fs.regular's refusal is EINVAL, which is otherwise a bug: a reader that lets it
    # through still gives one line naming the path.
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OSError) as e:
        open_regular(tmp_path / "pipe")
    error = from_os_error(e.value)
    assert error is not None
    assert error.message == f"'{tmp_path / 'pipe'}': not a regular file (a FIFO)"


def test_a_size_beyond_a_float_is_a_usage_error(tmp_path: Path) -> None:
    r = acbuild("cache", "prune", "--max-size", "9" * 400 + "T", "--cache-dir", tmp_path / "c")
    assert r.code == 2 and "is larger than any disk" in r.stderr, r.stderr
