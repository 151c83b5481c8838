"""fs.regular: a file only to be read is opened without waiting on a FIFO or opening a
device, and anything but a regular file is refused with the reason."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from acbuild.fs.regular import open_regular, read_regular

REPO = Path(__file__).resolve().parents[2]


def _released(path: Path) -> None:
    """Unblock an open() of the FIFO ``path`` that the old code would be stuck in."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # nobody is reading: nothing is stuck
    os.close(fd)


def _within(seconds: float, fifo: Path | None, call: Callable[[], object]) -> BaseException:
    """The exception ``call`` raised; a test failure if it took longer than ``seconds``."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:
            caught.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive() and fifo is not None:
        _released(fifo)
        thread.join(5)
        pytest.fail(f"opening {fifo} blocked")
    assert caught, "a non-regular file was opened"
    return caught[0]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "file").write_bytes(b"content\nsecond\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "to-file").symlink_to("file")
    (tmp_path / "to-fifo").symlink_to("fifo")
    (tmp_path / "to-zero").symlink_to("/dev/zero")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        yield tmp_path


def test_a_regular_file_is_read_and_the_descriptor_is_plain(tree: Path) -> None:
    with open_regular(tree / "file") as f:
        flags = fcntl.fcntl(f.fileno(), fcntl.F_GETFL)
        assert flags & os.O_ACCMODE == os.O_RDONLY
        assert not flags & (os.O_NONBLOCK | os.O_PATH)
        assert fcntl.fcntl(f.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert f.readline() == b"content\n"
        assert f.read() == b"second\n"
    assert read_regular(tree / "to-file") == b"content\nsecond\n"
    assert read_regular(str(tree / "file"), limit=3) == b"cont"


def test_a_fifo_with_no_writer_is_refused_at_once(tree: Path) -> None:
    for name in ("fifo", "to-fifo"):
        e = _within(5, tree / name, lambda n=name: open_regular(tree / n))  # type: ignore[misc]
        assert isinstance(e, OSError) and e.errno == errno.EINVAL, e
        assert e.strerror == "not a regular file (a FIFO)"
        assert e.filename == str(tree / name)


@pytest.mark.parametrize("path, kind", [
    ("/dev/zero", "a character device"), ("to-zero", "a character device"),
    ("/dev/null", "a character device"), ("sock", "a socket"),
])
def test_devices_and_sockets_are_refused(tree: Path, path: str, kind: str) -> None:
    with pytest.raises(OSError) as e:
        read_regular(tree / path)
    assert (e.value.errno, e.value.strerror) == (errno.EINVAL, f"not a regular file ({kind})")


def test_a_device_is_never_opened(tree: Path) -> None:
    # /dev/tty's own open fails (ENXIO) in a process with no controlling terminal; refused
    # as a device, it was never opened at all (nor /dev/watchdog would be, which arms the
    # reboot timer by being opened).
    proc = subprocess.run(
        [sys.executable, "-c", "from acbuild.fs.regular import open_regular\n"
         "try:\n open_regular('/dev/tty')\nexcept OSError as e:\n print(e.errno, e.strerror)"],
        capture_output=True, text=True, timeout=20, start_new_session=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.strip() == f"{errno.EINVAL} not a regular file (a character device)", \
        proc.stdout + proc.stderr


def test_a_directory_is_refused_as_open_would(tree: Path) -> None:
    with pytest.raises(IsADirectoryError) as e:
        open_regular(tree / "dir")
    assert e.value.strerror == os.strerror(errno.EISDIR)


def test_missing_and_unfollowed(tree: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_regular(tree / "missing")
    with pytest.raises(OSError) as e:
        open_regular(tree / "to-file", follow_symlinks=False)
    assert e.value.errno == errno.ELOOP
    top = os.open(tree, os.O_PATH)
    try:
        assert read_regular("file", dir_fd=top, follow_symlinks=False) == b"content\nsecond\n"
    finally:
        os.close(top)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_descriptor_is_checked_and_owned(tree: Path) -> None:
    before = _open_fds()
    # O_PATH: reopened for reading, even once the name is gone (the inode checked is read).
    path_fd = os.open(tree / "file", os.O_PATH)
    os.unlink(tree / "file")
    with open_regular(path_fd) as f:
        assert f.read() == b"content\nsecond\n"
    # O_NONBLOCK, as an openat that must not wait on a FIFO gives it: cleared.
    (tree / "file").write_bytes(b"x")
    with open_regular(os.open(tree / "file", os.O_RDONLY | os.O_NONBLOCK)) as f:
        assert not fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert f.read() == b"x"
    for fd in (os.open(tree / "fifo", os.O_RDONLY | os.O_NONBLOCK),
               os.open(tree / "fifo", os.O_PATH), os.open(tree / "dir", os.O_RDONLY)):
        with pytest.raises(OSError) as e:
            open_regular(fd)
        assert e.value.errno in (errno.EINVAL, errno.EISDIR)
    assert _open_fds() == before  # every descriptor closed, refused ones too


def test_refusals_close_what_they_opened(tree: Path) -> None:
    before = _open_fds()
    for name in ("fifo", "dir", "sock", "to-zero", "missing"):
        with pytest.raises(OSError):
            open_regular(tree / name)
    with pytest.raises(OSError):
        open_regular(tree / "to-file", follow_symlinks=False)
    assert _open_fds() == before


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to hide /proc")
def test_without_proc_the_name_is_opened_non_blocking(tree: Path) -> None:
    script = (
        "import os, sys\n"
        "from acbuild.fs.regular import open_regular\n"
        "assert not os.path.exists('/proc/self')\n"
        "print(open_regular(sys.argv[1] + '/file').read().decode().split()[0])\n"
        "for name in ('fifo', 'to-zero'):\n"
        "    try:\n        open_regular(sys.argv[1] + '/' + name)\n"
        "    except OSError as e:\n        print(e.strerror)\n")
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs none /proc && exec "$@"', "sh", sys.executable, "-c", script,
         str(tree)],
        capture_output=True, text=True, timeout=20, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0 and "mount" in proc.stderr and "Traceback" not in proc.stderr:
        pytest.skip(f"cannot hide /proc here: {proc.stderr.strip()}")
    assert proc.stdout.splitlines() == [
        "content", "not a regular file (a FIFO)", "not a regular file (a character device)"], \
        proc.stdout + proc.stderr
