"""--progress=json: every event of real runs validates against docs/logs.schema.json."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from tests.conftest import REPO
from tests.support.busybox import BUSYBOX, busybox_available
from tests.support.cli import acbuild
from tests.support.gpghelp import Keys

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys

SCHEMA = json.loads((REPO / "docs" / "logs.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _events(text: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    for event in events:
        errors = sorted(VALIDATOR.iter_errors(event), key=str)
        assert not errors, f"{event} does not fit the schema: {errors[0].message}"
    return events


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert not VALIDATOR.is_valid({"event": "step-started", "version": 1, "time": "x"})


def test_a_build_and_its_cached_rebuild(hello_context: Path, tmp_path: Path) -> None:
    for _ in range(2):
        r = acbuild("build", "--progress=json", hello_context / "Acfile", "-o",
                    tmp_path / "h.aci")
        assert r.code == 0, r.stderr
        events = _events(r.stderr)
        summary = events[-1]
        assert summary["event"] == "summary" and summary["image_id"] == r.stdout.strip()
        assert isinstance(summary["size"], int) and isinstance(summary["seconds"], float)
    assert {e["event"] for e in events} >= {"step-started", "step-finished", "summary"}


def test_failures_usage_errors_lint_and_other_verbs(tmp_path: Path) -> None:
    (tmp_path / "Acfile").write_text("BEGIN scratch\nNAME example.com/j\nCOPY missing /x\n")
    r = acbuild("build", "--progress=json", tmp_path / "Acfile", "-o", tmp_path / "x.aci")
    assert r.code == 1
    assert _events(r.stderr)[-1]["event"] == "error"
    usage = acbuild("build", "--progress=json", "--no-such-option")
    assert usage.code == 2
    (error,) = _events(usage.stderr)
    assert error["usage"] is True
    lint = acbuild("lint", "--progress=json", tmp_path / "Acfile")
    assert lint.code == 1
    assert {e["rule"] for e in _events(lint.stdout)} >= {"AC001"}
    validate = acbuild("validate", "--progress=json", tmp_path / "missing.aci")
    assert validate.code != 0
    _events(validate.stderr)


def test_run_output_and_progress_events(tmp_path: Path) -> None:
    if not busybox_available():
        import pytest

        pytest.skip("busybox-static is not installed")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "busybox").write_bytes(BUSYBOX.read_bytes())
    (ctx / "Acfile").write_text(
        "BEGIN scratch\nNAME example.com/j\nCOPY --mode=0755 busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "sh", "-c", "echo one; echo two; exit 4"]\n')
    r = acbuild("build", "--progress=json", "-v", ctx, "-o", tmp_path / "x.aci")
    assert r.code == 1
    events = _events(r.stderr)
    assert [e["line"] for e in events if e["event"] == "step-output"] == ["one", "two"]


def _verbs() -> set[str]:
    """Every verb and sub-verb the CLI has, as `VERB` or `GROUP SUB`."""
    import click

    from acbuild.cli.app import cli

    ctx = click.Context(cli)
    found = set()
    for name in cli.list_commands(ctx):
        verb = cli.get_command(ctx, name)
        found.add(name)
        if isinstance(verb, click.Group):
            found |= {f"{name} {sub}" for sub in verb.list_commands(ctx)}
    return found


def test_every_verb_writes_only_schema_events_to_stderr(hello_context: Path, tmp_path: Path,
                                                       gpgkeys: Keys) -> None:
    """Each verb (and sub-verb) run the way a CI job would, succeeding or failing, with
    --progress=json after the verb and, for groups, before the sub-verb: nothing on stderr
    that is not an event of the schema."""
    image = tmp_path / "h.aci"
    assert acbuild("build", "-q", hello_context / "Acfile", "-o", image).code == 0
    other = tmp_path / "o.aci"
    assert acbuild("build", "-q", "--var", "x=1", "--compression", "none",
                   hello_context / "Acfile", "-o", other).code == 0
    signed = tmp_path / "s.aci"
    signed.write_bytes(image.read_bytes())
    store, trust, cache = tmp_path / "store", tmp_path / "trust", tmp_path / "cache"
    home = ["--gpg-home", gpgkeys.home]
    runs: dict[str, list[tuple[object, ...]]] = {
        "build": [("build", hello_context / "Acfile", "-o", image, "--var", "unused=1"),
                  ("build", tmp_path / "nowhere"), ("build", "--build-arg", "A=1")],
        "cache": [("cache", "--progress=json", "list", "--cache-dir", cache)],
        "cache list": [("cache", "list", "--cache-dir", cache)],
        "cache prune": [("cache", "prune", "--cache-dir", cache),
                        ("cache", "prune", "--all", "--cache-dir", cache)],
        "completion": [("completion", "bash"), ("completion", "nosh")],
        "convert": [("convert", tmp_path / "missing.tar", "-o", tmp_path / "c.aci")],
        "diff": [("diff", image, other), ("diff", image, tmp_path / "missing.aci")],
        "discover": [("discover", "127.0.0.1:1/x", "--insecure")],
        "export": [("export", image, "-o", tmp_path / "oci"), ("export", image)],
        "fetch": [("fetch", image, "--store", store), ("fetch", image, "--store", store,
                                                       "--insecure-skip-verify")],
        "fmt": [("fmt", hello_context / "Acfile"), ("fmt", "--check", tmp_path / "no")],
        "gc": [("gc",), ("gc", "--keep", "100", "--store", store)],
        "go": [("go", tmp_path / "nopkg")],
        "images": [("images", "--progress=json", "--store", store)],
        "images list": [("images", "list", "--store", store)],
        "images rm": [("images", "rm", "example.com/none", "--store", store)],
        "inspect": [("inspect", image), ("inspect", tmp_path / "missing.aci")],
        "lint": [("lint", hello_context / "Acfile")],
        "login": [("login", "127.0.0.1:1")],
        "logout": [("logout", "127.0.0.1:1")],
        "manifest": [("manifest", image)],
        "plan": [("plan", hello_context / "Acfile", "--var", "x=1")],
        "publish": [("publish", signed, "--repo", tmp_path / "repo")],
        "pull": [("pull", "docker://127.0.0.1:1/x", "--store", store)],
        "run": [("run", image), ("run", tmp_path / "missing.aci")],
        "sign": [("sign", signed, "--key", gpgkeys.fpr["alice"], *home),
                 ("sign", signed, "--key", "nobody@example.com", *home)],
        "trust": [("trust", gpgkeys.pub["alice"], "--prefix", "example.com", "--yes",
                   "--trust-store", trust), ("trust", "--list", "--trust-store", trust)],
        "validate": [("validate", image, tmp_path / "missing.aci")],
        "verify": [("verify", signed, "--trust-store", trust),
                   ("verify", image, "--trust-store", trust)],
    }
    assert set(runs) == _verbs(), "a verb is missing from this test"
    codes = set()
    for verb, invocations in runs.items():
        for args in invocations:
            given = [str(a) for a in args]
            if "--progress=json" not in given:
                given.insert(len(verb.split()), "--progress=json")
            r = acbuild(*given, cwd=tmp_path)
            codes.add(r.code)
            for line in r.stderr.splitlines():
                assert line.startswith("{"), f"{given}: not an event: {line!r}"
            events = _events(r.stderr)
            # diff, validate (and lint, fmt --check, verify): 1 can mean "found something".
            found = verb == "diff" or (events[-1:] and events[-1]["event"] == "validated")
            if r.code != 0 and not (r.code == 1 and found):
                assert events and events[-1]["event"] == "error", (given, r.stderr)
    assert codes >= {0, 1, 2}
    # Global options are taken before a sub-verb too, as before a verb.
    for group in (("images", "--progress=json", "-q", "--store", store),
                  ("cache", "--progress=json", "-v", "list", "--cache-dir", cache)):
        r = acbuild(*group)
        assert r.code == 0, (group, r.stderr)


def test_quiet_json_keeps_warnings_as_events(hello_context: Path, tmp_path: Path) -> None:
    r = acbuild("build", "-q", "--progress=json", "--var", "unused=1",
                hello_context / "Acfile", "-o", tmp_path / "h.aci")
    assert r.code == 0, r.stderr
    (warning,) = _events(r.stderr)
    assert warning["event"] == "warning" and "unused" in str(warning["message"])


def test_an_interrupted_build_ends_its_stream_with_an_error_event(tmp_path: Path) -> None:
    if not busybox_available():
        import pytest

        pytest.skip("busybox-static is not installed")
    import os
    import signal
    import subprocess
    import sys
    import time

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "busybox").write_bytes(BUSYBOX.read_bytes())
    (ctx / "Acfile").write_text("BEGIN scratch\nNAME example.com/j\n"
                                "COPY --mode=0755 busybox /bin/busybox\n"
                                'RUN ["/bin/busybox", "sleep", "60"]\n')
    for signum, message, code in ((signal.SIGINT, "interrupted", 130),
                                  (signal.SIGTERM, "terminated", 143)):
        log = tmp_path / f"{message}.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "acbuild", "build", "--progress=json", "--no-cache",
                 ctx, "-o", tmp_path / "x.aci"], stderr=err, stdout=subprocess.DEVNULL,
                env={**os.environ, "CI": "true"})
            deadline = time.monotonic() + 60
            while '"step": 4' not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.3)
            proc.send_signal(signum)
            assert proc.wait(timeout=60) == code
        events = _events(log.read_text())
        assert events[-1]["event"] == "error" and events[-1]["message"] == message


def test_writing_a_copy_only_image_has_a_true_total(tmp_path: Path) -> None:
    """The files a COPY leaves in the context (not staged) count in the write's total: the
    bar of such an image once said 100% from its first byte."""
    import random

    ctx = tmp_path / "ctx"
    (ctx / "data").mkdir(parents=True)
    for i in range(4):
        (ctx / "data" / f"blob{i}").write_bytes(random.Random(i).randbytes(8 << 20))
    (ctx / "Acfile").write_text("BEGIN scratch\nNAME example.com/j\nCOPY data/ /data/\n")
    r = acbuild("build", "--progress=json", "--no-cache", "--compression", "none", ctx,
                "-o", tmp_path / "x.aci")
    assert r.code == 0, r.stderr
    writes = [e for e in _events(r.stderr) if e["event"] == "progress"
              and e["what"] == "compress"]
    assert len(writes) >= 3
    final = writes[-1]["done"]
    assert isinstance(final, int)
    for event in writes[:-1]:
        assert isinstance(event["total"], int) and isinstance(event["done"], int)
        assert event["done"] < event["total"] and event["total"] >= final * 0.9, event
