"""build's output: checked before step 1, streamed with -o -, the ID in --iidfile."""

from __future__ import annotations

import hashlib
import os
import pty
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from tests.support.cli import acbuild

ACFILE = "BEGIN scratch\nNAME example.com/out\nLABEL version=1\n"


def _acfile(tmp_path: Path, text: str = ACFILE) -> Path:
    path = tmp_path / "ctx" / "Acfile"
    path.parent.mkdir()
    path.write_text(text)
    return path


def test_an_output_that_cannot_be_written_fails_before_any_step(tmp_path: Path) -> None:
    acfile = _acfile(tmp_path)
    for output, message in (
        (tmp_path / "missing" / "x.aci", f"{tmp_path / 'missing'} does not exist"),
        (tmp_path, "it is a directory"),
        (Path("/sys/x.aci"), "cannot write /sys/x.aci: Permission denied"),
    ):
        r = acbuild("build", "--progress=plain", acfile, "-o", output)
        assert r.code == 1, r.stderr
        assert message in r.stderr, r.stderr
        assert "[1/" not in r.stderr  # no step ran
    r = acbuild("build", acfile, "-o", tmp_path / "missing" / "x.aci")
    assert "hint: create the directory first (mkdir -p" in r.stderr


def test_dash_streams_the_image_and_puts_the_id_on_stderr_and_in_iidfile(tmp_path: Path) -> None:
    acfile = _acfile(tmp_path)
    file_build = acbuild("build", "-q", acfile, "-o", tmp_path / "file.aci")
    proc = subprocess.run([sys.executable, "-m", "acbuild", "build", "-q", str(acfile), "-o",
                           "-", "--iidfile", str(tmp_path / "iid")], capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (tmp_path / "file.aci").read_bytes()
    assert proc.stderr.decode().strip() == file_build.stdout.strip()
    assert (tmp_path / "iid").read_text() == file_build.stdout.strip()
    assert not (tmp_path / "ctx" / "-").exists() and not Path("-").exists()
    assert hashlib.sha512(proc.stdout).digest()  # bytes, not text


def test_dash_refuses_a_terminal_and_signing(tmp_path: Path) -> None:
    acfile = _acfile(tmp_path, ACFILE + "SIGN nobody@example.com\n")
    r = acbuild("build", acfile, "-o", "-")
    assert r.code == 1
    assert "Acfile:4:1: error: -o - streams the image, and a signature needs a file" in r.stderr

    leader, follower = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "acbuild", "build", str(acfile), "-o", "-"],
                          stdout=follower, stderr=subprocess.PIPE, timeout=60)
    os.close(follower)
    os.close(leader)
    assert proc.returncode == 2
    assert b"would write the image to the terminal" in proc.stderr


def _build(acfile: Path, *args: str | Path, stdout: int | IO[bytes] = subprocess.PIPE
           ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "acbuild", "build", "-q", str(acfile),
                           *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          timeout=120)


def test_a_fifo_or_device_output_is_written_into_never_replaced(tmp_path: Path) -> None:
    """-o naming a FIFO or a character device streams into it: a rename would have made
    root's `-o /dev/null` a regular file where the machine's /dev/null was."""
    acfile = _acfile(tmp_path)
    image = acbuild("build", "-q", acfile, "-o", tmp_path / "file.aci")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    proc = _build(acfile, "-o", fifo)
    reader.join(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert got == [(tmp_path / "file.aci").read_bytes()]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert proc.stdout.decode().strip() == image.stdout.strip()  # the ID stays on stdout
    if os.geteuid() == 0:  # only root makes device nodes
        null = tmp_path / "null"
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        proc = _build(acfile, "-o", null, "--iidfile", null)
        assert proc.returncode == 0, proc.stderr
        assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == \
            os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx", "fifo", "file.aci",
                                                          *(["null"] * (os.geteuid() == 0))]


def test_dev_stdout_is_stdout_whatever_stdout_is(tmp_path: Path) -> None:
    """/dev/stdout (a link in /dev to /proc/self/fd/1) is written through, as -o - is: to a
    file stdout was redirected to, or a pipe; the link itself stays, and the ID goes to
    stderr."""
    acfile = _acfile(tmp_path)
    image = acbuild("build", "-q", acfile, "-o", tmp_path / "file.aci")
    try:
        _through_dev_stdout(acfile, tmp_path, image.stdout)
    finally:  # where root's build renamed a file over the link, give the machine it back
        if os.geteuid() == 0 and not os.path.islink("/dev/stdout"):
            os.unlink("/dev/stdout")
            os.symlink("/proc/self/fd/1", "/dev/stdout")
    assert os.readlink("/dev/stdout") == "/proc/self/fd/1"


def _through_dev_stdout(acfile: Path, tmp_path: Path, image_id: str) -> None:
    for output in ("/dev/stdout", "/dev/fd/1"):
        with (tmp_path / "redirected").open("wb") as out:
            proc = _build(acfile, "-o", output, stdout=out)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "redirected").read_bytes() == (tmp_path / "file.aci").read_bytes()
        assert proc.stderr.decode().strip() == image_id.strip()
        piped = _build(acfile, "-o", output)
        assert piped.returncode == 0 and piped.stdout == (tmp_path / "file.aci").read_bytes()
    # --iidfile /dev/stdout: stdout's one line is the ID already, once
    proc = _build(acfile, "-o", tmp_path / "again.aci", "--iidfile", "/dev/stdout")
    assert proc.returncode == 0 and proc.stdout.decode() == image_id
    proc = _build(acfile, "-o", "/dev/stdout", "--iidfile", "/dev/stdout")
    assert proc.returncode == 2
    assert b"--iidfile /dev/stdout is stdout, where -o /dev/stdout sends the image" in \
        proc.stderr


def test_a_stream_output_refuses_a_terminal_and_signing(tmp_path: Path) -> None:
    acfile = _acfile(tmp_path, ACFILE + "SIGN nobody@example.com\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = acbuild("build", acfile, "-o", fifo)  # no reader: it must fail before opening it
    assert r.code == 1
    assert f"error: -o {fifo} streams the image, and a signature needs a file" in r.stderr
    (tmp_path / "plain").write_text(ACFILE)
    leader, follower = pty.openpty()
    terminal = os.ttyname(follower)
    try:
        r = acbuild("build", tmp_path / "plain", "-o", terminal)
    finally:
        os.close(follower)
        os.close(leader)
    assert r.code == 2
    assert f"-o {terminal} is a terminal, and an image is binary" in r.stderr, r.stderr


def test_a_fifo_at_the_signature_name_is_refused_not_removed(tmp_path: Path) -> None:
    """Red team RO-1: a build replacing IMAGE removes IMAGE.asc (no signature outlives its
    bytes); a FIFO or device there was unlinked with it."""
    acfile = _acfile(tmp_path)
    os.mkfifo(tmp_path / "out.aci.asc")
    r = acbuild("build", acfile, "-o", tmp_path / "out.aci")
    assert r.code == 1
    assert f"error: cannot write {tmp_path / 'out.aci.asc'}: it is a FIFO, which is never " \
           "replaced" in r.stderr, r.stderr
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out.aci.asc").st_mode)


def test_a_stream_swapped_during_the_build_is_not_written(tmp_path: Path) -> None:
    """Red team RO-5: the FIFO named by -o was opened again by name at the end; a terminal
    or a file put there meanwhile got the image."""
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "big").write_bytes(os.urandom(8 << 20))
    (tmp_path / "ctx" / "Acfile").write_text(ACFILE + "COPY big /big\n")
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "acbuild", "build", "--no-cache",
                             "--progress=plain", str(tmp_path / "ctx" / "Acfile"), "-o",
                             str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:  # the build has classified its output: swap it
        if b"COPY" in line:
            break
    os.unlink(fifo)
    fifo.write_bytes(b"")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (proc.returncode, err[-300:])
    assert b"it is no longer the FIFO or device it was when the build began" in err
    assert fifo.read_bytes() == b""
