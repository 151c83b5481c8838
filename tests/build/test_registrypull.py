"""A build's docker:// bases resolved ahead (acbuild.build.registrypull.resolve_ahead,
red-team RR-6): the cache keys need every base's digest before a stage starts, and they were
asked for one after another; against real servers on 127.0.0.1 that withhold their answers,
and the real registry for a build whose output must not change."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from acbuild.build.registrypull import RegistryAccess, RegistryBases
from acbuild.errors import Span
from acbuild.report import SilentReporter
from tests.support.registry import Registry
from tests.support.trickle import Answer, TrickleServer, answer, trickle_server

pytest_plugins = ("tests.support.registryfixtures",)

SLOW = 150.0  # seconds an answer is withheld that a stop must not wait for


def withheld(seconds: float) -> Answer:
    """A 404 (manifest unknown) whose last byte comes ``seconds`` after the rest."""
    head = answer(404, body=b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
    return Answer(head=head.head, body=head.body, head_piece=len(head.head) - 1,
                  head_pause=seconds)


def two_bases(tmp_path: Path, a: str, b: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Acfile").write_text(
        f"BEGIN {a} AS a\n"
        f"BEGIN {b} AS b\n"
        "BEGIN scratch\n"
        "NAME example.com/two\n"
        "COPY --from=a /bin/busybox /a\n"
        "COPY --from=b /bin/busybox /b\n")
    return ctx / "Acfile"


def build(tmp_path: Path, acfile: Path, *hosts: str, jobs: int = 1,
          cache: str = "cache") -> subprocess.Popen[str]:
    insecure = [arg for host in hosts for arg in ("--insecure-registry", host)]
    return subprocess.Popen(
        [sys.executable, "-m", "acbuild", "build", str(acfile), "-o",
         str(tmp_path / "out.aci"), "-j", str(jobs), "--insecure-skip-verify",
         "--progress=plain", *insecure], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "CI": "true", "TMPDIR": str(tmp_path),
                        "XDG_CACHE_HOME": str(tmp_path / cache)})


def first_request(*servers: TrickleServer) -> float:
    deadline = time.monotonic() + 30
    while not any(s.requests for s in servers) and time.monotonic() < deadline:
        time.sleep(0.02)
    return time.monotonic()


def ended(proc: subprocess.Popen[str]) -> tuple[float, str]:
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return time.monotonic(), err


def test_two_withheld_tags_are_resolved_at_once_and_the_first_failure_is_reported(
        tmp_path: Path) -> None:
    """Stage a's registry withholds its answer 3 s, b's 2.5 s: one after another that took
    5.5 s; now 3 s. b's 404 comes first, but a's is the error: a comes first in the plan."""
    with trickle_server() as one, trickle_server() as two:
        one.otherwise, two.otherwise = withheld(3.0), withheld(2.5)
        proc = build(tmp_path, two_bases(tmp_path, f"docker://{one.host}/library/a:1",
                                         f"docker://{two.host}/library/b:1"),
                     one.host, two.host)
        started = first_request(one, two)
        end, err = ended(proc)
    assert proc.returncode == 1, err
    assert end - started < 4.5, (end - started, err)
    assert one.requests and two.requests
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert f"{one.host}/library/a" in line, err
    assert not (tmp_path / "out.aci").exists()


def test_an_interrupt_ends_tags_resolved_ahead(tmp_path: Path) -> None:
    with trickle_server() as one, trickle_server() as two:
        one.otherwise = two.otherwise = withheld(SLOW)
        proc = build(tmp_path, two_bases(tmp_path, f"docker://{one.host}/library/a:1",
                                         f"docker://{two.host}/library/b:1"),
                     one.host, two.host)
        deadline = time.monotonic() + 30
        while not (one.requests and two.requests) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        end, err = ended(proc)
    assert end - sent < 1.5, (end - sent, err)
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("interrupted"), err
    assert "Traceback" not in err and "stopped" not in err
    assert not (tmp_path / "out.aci").exists()
    assert os.listdir(tmp_path / f"acbuild-py-{os.geteuid()}") == []


class _Said(SilentReporter):
    def __init__(self) -> None:
        self.said: list[str] = []

    def info(self, message: str) -> None:
        self.said.append(message)

    def warning(self, message: str, span: Span | None = None) -> None:
        self.said.append(f"warning: {message}")


def test_tags_resolved_ahead_say_what_they_said_when_asked(http_registry: Registry,
                                                           busybox_oci: Path) -> None:
    """The same digests and the same lines, each base's only once its identity is asked
    for, in the order it is asked for (the keys': the plan's)."""
    digest = http_registry.push(f"oci:{busybox_oci}:1.36", "library/busybox:other")
    texts = [http_registry.ref(f"library/busybox{tail}")
             for tail in (":1.36", ":other", f"@{digest}")]
    access = RegistryAccess(insecure_registries=(http_registry.host,), skip_verify=True,
                            store_dir=http_registry.storage.parent / "store")
    one_by_one, ahead = _Said(), _Said()
    alone = RegistryBases(access, threading.Event())
    digests = [alone.identity(text, one_by_one) for text in texts]
    bases = RegistryBases(access, threading.Event())
    bases.resolve_ahead(texts)
    assert ahead.said == []
    assert [bases.identity(text, ahead) for text in reversed(texts)] == digests[::-1]
    assert ahead.said == [m for text in reversed(texts) for m in one_by_one.said
                          if text in m]
    assert len(one_by_one.said) == 3
