"""Tests for atomic output: rename on success, nothing changed on failure, umask modes."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.errors import AcbuildError
from acbuild.fs import atomic
from acbuild.fs.atomic import atomic_write, atomic_write_at, check_writable


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_success_renames_into_place_with_the_umask_mode(tmp_path: Path, umask_027: None) -> None:
    target = tmp_path / "out.aci"
    with atomic_write(target) as f:
        f.write(b"image")
        # While writing, the target does not exist yet; only a hidden temp file does.
        assert not target.exists()
        assert len(list(tmp_path.iterdir())) == 1
    assert target.read_bytes() == b"image"
    assert _mode(target) == 0o640  # 0666 & ~027, as open() would give, not mkstemp's 0600
    assert list(tmp_path.iterdir()) == [target]


def test_explicit_mode(tmp_path: Path, umask_027: None) -> None:
    target = tmp_path / "out.asc"
    with atomic_write(target, mode=0o644) as f:
        f.write(b"sig")
    assert _mode(target) == 0o644


def test_a_private_mode_holds_from_the_creation_of_the_temporary_file(tmp_path: Path) -> None:
    """A secret (registry credentials) is never readable by others, not even before the
    commit: another user who opens the temporary file while it is written gets nothing."""
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "config.json", mode=0o600) as f:
            assert stat.S_IMODE(os.fstat(f.fileno()).st_mode) == 0o600
            (temp,) = tmp_path.iterdir()
            assert _mode(temp) == 0o600
            f.write(b"secret")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "config.json") == 0o600


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.aci"
    target.write_bytes(b"old")
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_keeps_previous_output_and_leaves_no_temp(
    tmp_path: Path, exc: BaseException
) -> None:
    target = tmp_path / "out.aci"
    target.write_bytes(b"previous")
    with pytest.raises(type(exc)), atomic_write(target) as f:
        f.write(b"partial" * 1000)
        raise exc
    assert target.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [target]


def test_failure_without_previous_output_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="disk on fire"), atomic_write(tmp_path / "x") as f:
        f.write(b"partial")
        raise OSError("disk on fire")  # the body's own errors pass through unchanged
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "out.aci"
    with pytest.raises(AcbuildError) as info, atomic_write(target):
        pass
    assert info.value.message == f"cannot write {target}: No such file or directory"


def _signal_while_held(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
    """SIGINT arrives the moment the temporary entry is locked as in use: after it exists,
    before any ``try`` of the writer's could own it, were it not made with signals held."""
    real = getattr(module, name)

    def interrupted(*args: object) -> object:
        result = real(*args)
        os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(module, name, interrupted)


def test_an_interrupt_while_the_temporary_file_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _signal_while_held(monkeypatch, atomic, "hold")
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "out.aci") as f:
        f.write(b"never")
    with pytest.raises(KeyboardInterrupt):
        check_writable(tmp_path / "out.aci")
    assert os.listdir(tmp_path) == []


def test_an_interrupt_while_the_temporary_file_is_made_at_a_directory_fd_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _signal_while_held(monkeypatch, fcntl, "flock")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(KeyboardInterrupt), atomic_write_at(fd, "stats") as f:
            f.write(b"never")
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []


# A rename replaces a name whatever it names: for root, -o /dev/null would have made the
# machine's /dev/null a regular file (every later `> /dev/null` then fails in a read-only
# bind, or writes to disk), and -o /dev/stdout the /dev/stdout link.
DESCRIPTOR = "it is a link to an open file of a process (as /dev/stdout is)"


def _specials(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    yield fifo, "it is a FIFO"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        yield tmp_path / "sock", "it is a socket"
    finally:
        sock.close()
    (tmp_path / "to-fifo").symlink_to("fifo")
    yield tmp_path / "to-fifo", "it is a link to a FIFO"
    (tmp_path / "my-stdin").symlink_to("/proc/self/fd/0")
    yield tmp_path / "my-stdin", DESCRIPTOR
    (tmp_path / "via").symlink_to("my-stdin")  # the chain, not just its first link
    yield tmp_path / "via", DESCRIPTOR
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        yield tmp_path / "null", "it is a character device"


def test_a_descriptor_link_is_found_as_the_kernel_resolves_the_path(tmp_path: Path) -> None:
    """Red team RO-4: the text of the path was collapsed (abspath), so q/../x with q a link
    elsewhere, or a link through a directory link into /proc, was not seen to name an open
    file: with the descriptor a regular file (stdout redirected), the link was replaced."""
    (tmp_path / "far" / "deep").mkdir(parents=True)
    (tmp_path / "q").symlink_to(tmp_path / "far" / "deep")
    fd = os.open(tmp_path / "redirected", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        (tmp_path / "far" / "x").symlink_to(f"/proc/self/fd/{fd}")
        (tmp_path / "x").write_bytes(b"the text's x, a plain file")
        (tmp_path / "pfd").symlink_to("/proc/self/fd")
        (tmp_path / "l1").symlink_to(f"pfd/{fd}")
        for path in (tmp_path / "q" / ".." / "x", tmp_path / "l1"):
            with pytest.raises(AcbuildError, match=DESCRIPTOR.replace("(", r"\(")
                               .replace(")", r"\)")):
                _write_nothing(path)
        assert (tmp_path / "far" / "x").is_symlink() and (tmp_path / "l1").is_symlink()
    finally:
        os.close(fd)


def test_remove_output_removes_files_and_links_and_refuses_the_rest(tmp_path: Path) -> None:
    """A stale signature's removal (red team RO-1, RO-2): a device or FIFO at IMAGE.asc was
    unlinked."""
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "link").symlink_to("file")
    for name in ("file", "link", "missing"):
        atomic.remove_output(tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == []
    for path, why in _specials(tmp_path):
        with pytest.raises(AcbuildError, match="which is never replaced"):
            atomic.remove_output(path)
        assert os.path.lexists(path), why


def _write_nothing(path: Path) -> None:
    with atomic_write(path):
        pass


def test_a_device_fifo_socket_or_descriptor_link_is_never_renamed_over(tmp_path: Path) -> None:
    for path, why in _specials(tmp_path):
        before = os.lstat(path)
        for attempt in (check_writable, _write_nothing):
            with pytest.raises(AcbuildError) as caught:
                attempt(path)
            assert caught.value.message == f"cannot write {path}: {why}, which is never replaced"
        after = os.lstat(path)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), path
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_special_file_made_while_the_image_is_written_stays(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with (pytest.raises(AcbuildError, match="it is a FIFO, which is never replaced"),
          atomic_write(target) as f):
        f.write(b"image")
        os.mkfifo(target)
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert list(tmp_path.iterdir()) == [target]


def test_a_link_to_a_file_or_to_nothing_is_replaced_not_followed(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_bytes(b"keep")
    for name, target in (("to-file", "elsewhere"), ("dangling", "missing")):
        (tmp_path / name).symlink_to(target)
        with atomic_write(tmp_path / name) as f:
            f.write(b"image")
        assert not (tmp_path / name).is_symlink()
        assert (tmp_path / name).read_bytes() == b"image"
    assert (tmp_path / "elsewhere").read_bytes() == b"keep"
    assert not (tmp_path / "missing").exists()


def test_atomic_write_at_replaces_a_link_but_never_a_fifo(tmp_path: Path) -> None:
    """Red team RO-8: publish's writes into --repo replaced a device there."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("elsewhere")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with (pytest.raises(AcbuildError, match="it is a FIFO, which is never replaced"),
              atomic_write_at(fd, "fifo") as f):
            f.write(b"x")
        with atomic_write_at(fd, "link") as f:
            f.write(b"x")
    finally:
        os.close(fd)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    assert (tmp_path / "link").read_bytes() == b"x" and not (tmp_path / "link").is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["fifo", "link"]
