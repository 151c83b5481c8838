"""RUN --mount=type=secret through the real CLI and sandbox: the secret is at
/run/secrets/ID for its step, and never in the image (files, tar entries, whiteouts), the
step cache (keys, entries, stat cache), any log (plain, json, tty, --log-file) or an error
message — and every hostile source (FIFO, /dev/zero, symlink out, directory) is refused."""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from tests.support.busybox import make_busybox_rootfs
from tests.support.cli import Result, acbuild
from tests.support.sandboxrun import needs_sandbox
from tests.support.terminal import run_in_terminal

pytestmark = needs_sandbox

SECRET = b"hunter2-s3cr3t-TOKEN-0192837465"
# The secret on its own line in an output, and in pieces: no piece of it may appear.
PIECES = (SECRET, SECRET.decode().encode("utf-16-le"), b"s3cr3t-TOKEN")


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    make_busybox_rootfs(tmp_path / "rootfs")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (tmp_path / "secret.txt").write_bytes(SECRET + b"\n")
    return ctx


def env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "cache"),
            "XDG_STATE_HOME": str(tmp_path / "state"), "SOURCE_DATE_EPOCH": "1600000000"}


def write(ctx: Path, run: str, *, mount: str = "type=secret,id=tok,required=true") -> Path:
    (ctx / "Acfile").write_text(f"BEGIN ../rootfs\nNAME example.com/secret\n"
                                f"RUN --mount={mount} /bin/sh -c '{run}'\nEXEC /bin/sh\n")
    return ctx / "Acfile"


def build(tmp_path: Path, acfile: Path, *extra: str | Path,
          secret: Path | None = None) -> Result:
    src = tmp_path / "secret.txt" if secret is None else secret
    return acbuild("build", "--allow-path", tmp_path, "--secret", f"id=tok,src={src}",
                   acfile, "-o", tmp_path / "out.aci", *extra, env=env(tmp_path))


def assert_nowhere(data: bytes, what: str) -> None:
    for piece in PIECES:
        assert piece not in data, f"the secret is in {what}"


def assert_not_in_tree(top: Path) -> None:
    for path in top.rglob("*"):
        assert_nowhere(os.fsencode(path.name), f"the name {path}")
        if path.is_file() and not path.is_symlink():
            assert_nowhere(path.read_bytes(), str(path))


def test_the_step_reads_it_and_nothing_keeps_it(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, "sha256sum /run/secrets/tok && stat -c \"%a %u\" /run/secrets/tok "
                   "&& echo used > /used")
    log = tmp_path / "build.log"
    got = build(tmp_path, acfile, "--progress", "plain", "--log-file", log)
    assert got.code == 0, got.stderr
    digest = hashlib.sha256(SECRET + b"\n").hexdigest()
    assert f"[3/5] | {digest}  /run/secrets/tok" in got.stderr
    assert "[3/5] | 400 0" in got.stderr  # read-only for its owner, root by default
    # The image: no file holds it, and /run/secrets is not even an empty entry.
    raw = gzip.decompress((tmp_path / "out.aci").read_bytes())
    assert_nowhere(raw, "the image")
    with tarfile.open(tmp_path / "out.aci") as tar:
        names = tar.getnames()
    assert "rootfs/used" in names
    assert not [n for n in names if n.startswith("rootfs/run") or ".wh." in n]
    assert_not_in_tree(tmp_path / "cache")  # step entries, keys, stat cache
    assert_not_in_tree(tmp_path / "state")  # logs
    assert_nowhere(log.read_bytes(), "the log file")
    assert_nowhere((got.stdout + got.stderr).encode(), "the output")


def test_a_changed_secret_does_not_change_the_step(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, "cat /run/secrets/tok > /dev/null && echo ran")
    first = build(tmp_path, acfile, "--progress", "plain")
    assert first.code == 0, first.stderr
    (tmp_path / "other.txt").write_bytes(b"another secret\n")
    again = build(tmp_path, acfile, "--progress", "plain", secret=tmp_path / "other.txt")
    assert again.code == 0, again.stderr
    assert "| ran" not in again.stderr  # cached: the secret is no part of the key
    assert again.stdout == first.stdout


def test_oci_layers_hold_no_trace(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, "cat /run/secrets/tok > /dev/null; mkdir -p /run/other")
    got = build(tmp_path, acfile, "--format", "oci-archive")
    assert got.code == 0, got.stderr
    with tarfile.open(tmp_path / "out.aci") as outer:
        for member in outer.getmembers():
            blob = outer.extractfile(member)
            data = blob.read() if blob is not None else b""
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            assert_nowhere(data, member.name)
            assert b"secrets" not in data, member.name  # no entry, no whiteout


@pytest.mark.parametrize("progress", ["plain", "json"])
def test_output_that_prints_it_is_redacted(ctx: Path, tmp_path: Path, progress: str) -> None:
    acfile = write(ctx, "echo before; cat /run/secrets/tok; echo \"x=$(cat /run/secrets/tok)\"")
    log = tmp_path / "build.log"
    got = build(tmp_path, acfile, "--progress", progress, "--log-file", log)
    assert got.code == 0, got.stderr
    assert_nowhere(got.stderr.encode(), f"--progress {progress}")
    assert_nowhere(log.read_bytes(), "the log file")
    assert "***" in got.stderr and "x=***" in log.read_text()


def test_the_terminal_screen_never_shows_it(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, "cat /run/secrets/tok; sleep 0.3; exit 3")
    screen = run_in_terminal("build", "--allow-path", tmp_path, "--secret",
                             f"id=tok,src={tmp_path / 'secret.txt'}", acfile, "-o",
                             tmp_path / "out.aci", env=env(tmp_path))
    assert screen.code == 1
    assert_nowhere(screen.raw, "the terminal")
    assert "RUN failed with exit status 3" in " ".join(screen.text.split())  # however it wraps


def test_a_failing_step_does_not_quote_it(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, "cat /run/secrets/tok; exit 9")
    log = tmp_path / "build.log"
    got = build(tmp_path, acfile, "--log-file", log)
    assert got.code == 1
    assert "RUN failed with exit status 9" in got.stderr
    assert "last lines of output:\n      ***" in got.stderr
    assert_nowhere(got.stderr.encode(), "the error")
    assert_nowhere(log.read_bytes(), "the log file")


def test_a_missing_required_secret_is_an_error_at_the_line(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, "true")
    got = acbuild("build", "--allow-path", tmp_path, acfile, "-o", tmp_path / "out.aci",
                  env=env(tmp_path))
    assert got.code == 1
    assert "Acfile:3:1: error: RUN needs secret 'tok', and none is given" in got.stderr
    assert "hint: build with --secret id=tok,src=FILE" in got.stderr


def test_an_optional_secret_may_be_absent(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, "test ! -e /run/secrets/tok && echo absent", mount="type=secret,id=tok")
    got = acbuild("build", "--allow-path", tmp_path, acfile, "-o", tmp_path / "out.aci",
                  "--progress", "plain", env=env(tmp_path))
    assert got.code == 0, got.stderr
    assert "| absent" in got.stderr


def test_mode_and_owner(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, "stat -c \"%a %u:%g\" /run/secrets/tok; cat /run/secrets/tok >/dev/null",
                   mount="type=secret,id=tok,mode=0440,uid=65534,gid=65534")
    got = build(tmp_path, acfile, "--progress", "plain")
    assert got.code == 0, got.stderr
    assert "| 440 65534:65534" in got.stderr


def test_the_program_cannot_write_it_or_find_its_descriptor(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, "echo x > /run/secrets/tok || echo refused; "
                   "echo y > /run/secrets/new || echo refused; "
                   "echo pid1 $(ls /proc/1/fd | wc -l); echo self $(ls /proc/self/fd)")
    got = build(tmp_path, acfile, "--progress", "plain")
    assert got.code == 0, got.stderr
    assert got.stderr.count("| refused") == 2
    # PID 1 (the sandbox's init) keeps only its stderr and the report pipe: the memfd it
    # copied the secret from is closed before the program starts; the program has 0-2
    # (and ls's own directory).
    assert "| pid1 2\n" in got.stderr
    assert "| self 0 1 2 3\n" in got.stderr


@pytest.mark.parametrize(("make", "why"), [
    (lambda p: os.mkfifo(p), "{} is not a regular file"),
    (lambda p: p.symlink_to("/dev/zero"), "{} is not a regular file"),
    (lambda p: p.mkdir(), "{} is not a regular file"),
    (lambda p: p.write_bytes(b"x" * ((1 << 20) + 1)), "{} is larger than 1024 KiB"),
    (lambda p: None, "cannot open {}: No such file or directory"),
])
def test_hostile_sources_are_refused(ctx: Path, tmp_path: Path, make: object,
                                     why: str) -> None:
    source = tmp_path / "hostile"
    make(source)  # type: ignore[operator]
    got = build(tmp_path, write(ctx, "true"), secret=source)
    assert got.code == 1
    assert "Acfile:3:1: error: secret 'tok': " + why.format(source) in got.stderr, got.stderr
    assert "Traceback" not in got.stderr


def test_acfile_source_is_confined_to_the_context(ctx: Path, tmp_path: Path) -> None:
    (ctx / ".npmrc").write_bytes(SECRET)
    acfile = write(ctx, "cat /run/secrets/tok >/dev/null && echo ok",
                   mount="type=secret,id=tok,src=.npmrc")
    got = acbuild("build", "--allow-path", tmp_path, acfile, "-o", tmp_path / "out.aci",
                  "--progress", "plain", env=env(tmp_path))
    assert got.code == 0, got.stderr
    assert "| ok" in got.stderr
    (ctx / "out").symlink_to(tmp_path)
    for source in ("out/secret.txt", ".npmrc-link"):
        if source == ".npmrc-link":
            (ctx / source).symlink_to(tmp_path / "secret.txt")
        acfile = write(ctx, "cat /run/secrets/tok", mount=f"type=secret,id=tok,src={source}")
        got = acbuild("build", "--allow-path", tmp_path, acfile, "-o", tmp_path / "out.aci",
                      env=env(tmp_path))
        assert got.code == 1
        assert f"secret 'tok': {source} (in the build context) is a symlink" in got.stderr
        assert_nowhere(got.stderr.encode(), "the error")


def test_the_command_line_secret_wins_over_the_acfile_source(ctx: Path, tmp_path: Path) -> None:
    (ctx / "dev-token").write_text("development\n")
    acfile = write(ctx, "cat /run/secrets/tok", mount="type=secret,id=tok,src=dev-token")
    got = build(tmp_path, acfile, "--progress", "plain")
    assert got.code == 0, got.stderr
    assert "| ***" in got.stderr and "development" not in got.stderr


@pytest.mark.parametrize(("value", "why"), [
    ("id=../x,src=/etc/hostname", "invalid secret id '../x'"),
    ("id=a/b,src=/etc/hostname", "invalid secret id 'a/b'"),
    ("src=/etc/hostname", "expected id=ID,src=FILE"),
    ("id=x,src=/etc/hostname,env=X", "expected id=ID,src=FILE"),
])
def test_bad_secret_options(tmp_path: Path, value: str, why: str) -> None:
    got = acbuild("build", "--secret", value, tmp_path, env=env(tmp_path))
    assert got.code == 2
    assert why in got.stderr


def test_the_secrets_of_one_step_are_bounded_together(ctx: Path, tmp_path: Path) -> None:
    mounts = " ".join(f"--mount=type=secret,id=s{i}" for i in range(5))
    (ctx / "Acfile").write_text(f"BEGIN ../rootfs\nNAME example.com/secret\nRUN {mounts} true\n")
    args: list[str | Path] = []
    for i in range(5):
        (tmp_path / f"s{i}").write_bytes(b"x" * (900 << 10))
        args += ["--secret", f"id=s{i},src={tmp_path / f's{i}'}"]
    got = acbuild("build", "--allow-path", tmp_path, *args, ctx / "Acfile", "-o",
                  tmp_path / "out.aci", env=env(tmp_path))
    assert got.code == 1
    assert "Acfile:3:1: error: the secrets of one RUN take more than 4 MiB" in got.stderr


def test_a_secret_across_the_line_cut_is_redacted(ctx: Path, tmp_path: Path) -> None:
    """The red team's RM-1: 8180 characters, then the secret, so the 8192-character cut of
    a long line falls inside it."""
    acfile = write(ctx, "head -c 8180 /dev/zero | tr \"\\\\0\" x; cat /run/secrets/tok; exit 4")
    log = tmp_path / "build.log"
    got = build(tmp_path, acfile, "--progress", "plain", "--log-file", log)
    assert got.code == 1
    for where, text in (("the output", got.stderr), ("the log", log.read_text())):
        for part in ("hunter2", "s3cr", "0192837465"):
            assert part not in text, f"part of the secret in {where}"
    assert "x***" in got.stderr
