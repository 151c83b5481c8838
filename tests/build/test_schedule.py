"""A parallel build's stop (acbuild.build.schedule): Ctrl-C, SIGTERM or a failed stage ends
the registry work of every other stage at once (red-team RT-11), against a real server on
127.0.0.1 that trickles its answers' headers a byte at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.trickle import TrickleServer, padded, trickle_server

SLOW = padded(200, body=b"{}", pad=3000, head_pause=0.05)  # 150 s of headers, each byte on time


def _acfile(tmp_path: Path, base_a: str, b_fails: bool = False) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Acfile").write_text(
        f"BEGIN {base_a} AS a\n"
        "WORKDIR /a\n"
        "BEGIN scratch AS b\n"
        f"{'COPY missing.txt /b/' if b_fails else 'WORKDIR /b'}\n"
        "BEGIN scratch\n"
        "NAME example.com/stopped\n"
        "COPY --from=a /a /a\n"
        "COPY --from=b /b /b\n")
    return ctx / "Acfile"


def _build(tmp_path: Path, server: TrickleServer, where: str,
           b_fails: bool = False) -> tuple[subprocess.Popen[str], str, Path]:
    """A -j 2 build whose stage a waits on ``server``: for its docker:// base's manifest,
    or for a --cache-from lookup; returns it and the request it waits on."""
    out = tmp_path / "out.aci"
    if where == "base":
        wanted = "/v2/library/slow/manifests/1"
        server.answers[wanted] = SLOW
        args = [_acfile(tmp_path, f"docker://{server.host}/library/slow:1", b_fails),
                "--no-cache", "--insecure-skip-verify"]
    else:
        wanted = "/v2/ci/cache/manifests/"
        server.otherwise = SLOW
        args = [_acfile(tmp_path, "scratch", b_fails), "--cache-from",
                f"registry://{server.host}/ci/cache"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "acbuild", "build", *map(str, args), "-o", str(out), "-j", "2",
         "--insecure-registry", server.host], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CI": "true", "TMPDIR": str(tmp_path)})
    return proc, wanted, out


def _ended(proc: subprocess.Popen[str], since: float) -> tuple[float, str]:
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    return time.monotonic() - since, err


def _clean(tmp_path: Path, out: Path, err: str) -> None:
    assert "Traceback" not in err
    assert "stopped" not in err  # the other stages' ends are not reported
    assert not out.exists()
    assert os.listdir(tmp_path / f"acbuild-py-{os.geteuid()}") == []  # no work directory


# At once is within 1.5 s of the signal: alone (.ci/run's serial part).
@pytest.mark.serial
@pytest.mark.parametrize("where", ["base", "cache-from"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_an_interrupt_ends_a_stage_waiting_on_a_registry(tmp_path: Path, where: str,
                                                         sig: signal.Signals) -> None:
    """Ctrl-C while a stage's thread read a trickling answer waited ~57 s for that thread."""
    with trickle_server() as server:
        proc, wanted, out = _build(tmp_path, server, where)
        deadline = time.monotonic() + 30
        while not any(wanted in r for r in server.requests) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(sig)
        took, err = _ended(proc, time.monotonic())
    assert took < 1.5, (took, err)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    _clean(tmp_path, out, err)


# Within 5 s of the start, two stages and a registry: alone (.ci/run's serial part).
@pytest.mark.serial
def test_a_failed_stage_ends_another_waiting_on_a_registry(tmp_path: Path) -> None:
    """Stage b fails at once, while stage a waits for its base's manifest. (With a
    --cache-from, b would wait on the cache first: nothing fails before.)"""
    with trickle_server() as server:
        proc, _, out = _build(tmp_path, server, "base", b_fails=True)
        took, err = _ended(proc, time.monotonic())
    assert took < 5, (took, err)
    assert proc.returncode == 1, err
    assert "missing.txt" in err
    _clean(tmp_path, out, err)
