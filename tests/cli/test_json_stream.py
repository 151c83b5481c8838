"""--progress=json: every event of real runs validates against docs/logs.schema.json."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from tests.conftest import REPO
from tests.support.busybox import BUSYBOX, busybox_available
from tests.support.cli import acbuild

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
