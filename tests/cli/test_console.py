"""Console: plain and JSON logs of a real build (stable fields), quiet, tty under a pty,
errors as JSON, and the live display stopped on failure."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from acbuild.cli.console import (
    JsonReporter,
    PlainReporter,
    QuietReporter,
    progress_mode,
    render_error,
)
from acbuild.cli.tty import TtyReporter
from acbuild.errors import AcfileError, ErrorGroup, Span
from acbuild.report import Field, NullReporter, Reporter, StepInfo
from tests.support.cli import acbuild
from tests.support.terminal import read_until_closed

ID = re.compile(r"sha512-[0-9a-f]{128}")
STEP = StepInfo(number=3, total=9, text="COPY hello /bin/hello")


def feed(r: Reporter) -> None:
    """One of each event a reporter is told during a build."""
    r.step_started(STEP)
    r.step_output(STEP, "compiling")
    r.step_finished(STEP, 0.21)
    r.step_finished(STEP, 0.0, cached=True)
    r.progress("copy", 1, 2)
    r.info("hello")
    r.warning("no EXEC", Span(file="Acfile", line=2, column=5))
    r.summary((Field("name", "name", "a.com/x"), Field("image_id", "image ID", "sha512-ab")))


def test_plain_lines() -> None:
    out = io.StringIO()
    feed(PlainReporter(out))
    assert out.getvalue() == (
        "[3/9] COPY hello /bin/hello\n[3/9] | compiling\n[3/9] DONE 0.2s\n[3/9] CACHED\n"
        "hello\nAcfile:2:5: warning: no EXEC\nname      a.com/x\nimage ID  sha512-ab\n"
    )


def test_quiet_reporter_keeps_only_warnings() -> None:
    out = io.StringIO()
    feed(QuietReporter(out))
    assert out.getvalue() == "Acfile:2:5: warning: no EXEC\n"


def test_null_reporter_keeps_warnings_and_output() -> None:
    r = NullReporter()
    feed(r)
    assert (r.warnings, r.output) == (["no EXEC"], ["compiling"])


def test_json_events() -> None:
    out = io.StringIO()
    r = JsonReporter(out)
    r.step_started(STEP)
    r.progress("copy", 10, 20)
    r.step_finished(STEP, 1.23456)
    r.warning("careful", Span(file="Acfile", line=4, column=1))
    r.summary((Field("image_id", "image ID", "sha512-" + "a" * 128),
               Field("seconds", "time", 1.0, "seconds"), Field("size", "size", 2048, "bytes")))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    for e in events:
        assert e.pop("version") == 1
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e.pop("time"))
    assert events == [
        {"event": "step-started", "step": 3, "total": 9, "text": STEP.text, "stage": None},
        {"event": "progress", "what": "copy", "done": 10, "total": 20, "step": 3},
        {"event": "step-finished", "step": 3, "seconds": 1.235, "cached": False},
        {"event": "warning", "message": "careful", "file": "Acfile", "line": 4, "column": 1},
        {"event": "summary", "image_id": "sha512-" + "a" * 128, "seconds": 1.0,
         "size": 2048},
    ]


def test_plain_build_log(hello_context: Path, tmp_path: Path) -> None:
    r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "h.aci", "--progress=plain",
                env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.code == 0, r.stderr
    lines = [re.sub(r"DONE \d+\.\d+s", "DONE <t>", line) for line in r.stderr.splitlines()]
    assert lines[:2] == ["[1/8] BEGIN scratch", "[1/8] DONE <t>"]
    assert "[6/8] COPY hello /bin/hello" in lines and lines[lines.index(
        "[6/8] COPY hello /bin/hello") + 1] == "[6/8] DONE <t>"
    assert lines[lines.index("[7/8] DONE <t>") + 1] == f"[8/8] WRITE {tmp_path / 'h.aci'}"
    assert re.fullmatch(r"image ID {11}sha512-[0-9a-f]{12}", lines[-7])
    assert [line[:17].strip() for line in lines[-9:]] == [
        "name", "version", "image ID", "compressed size", "uncompressed size", "entries",
        "signature", "output", "time",
    ]
    assert "\x1b" not in r.stderr  # no colour, no cursor movement
    assert ID.fullmatch(r.stdout.strip())


def test_json_build_log_and_cached_rebuild(hello_context: Path, tmp_path: Path) -> None:
    cached = []
    for _ in range(2):
        r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "h.aci",
                    "--progress", "json", env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
        assert r.code == 0, r.stderr
        cached.append([json.loads(line)["cached"] for line in r.stderr.splitlines()
                       if '"step-finished"' in line])
    assert cached == [[False] * 8, [True] * 8]
    assert ID.fullmatch(r.stdout.strip()) and r.stdout.count("\n") == 1
    events = [json.loads(line) for line in r.stderr.splitlines()]  # nothing but JSON
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["step-started", "step-finished"] and kinds[-1] == "summary"
    assert events[-1]["image_id"] == r.stdout.strip()
    assert {"name", "image_version", "image_id", "size", "uncompressed_size", "entries",
            "signatures", "output", "seconds"} <= set(events[-1])
    assert isinstance(events[-1]["size"], int) and isinstance(events[-1]["seconds"], float)


def test_quiet_prints_only_the_id(hello_context: Path, tmp_path: Path) -> None:
    r = acbuild("-q", "build", hello_context / "Acfile", "-o", tmp_path / "h.aci")
    assert r.code == 0 and r.stderr == ""
    assert ID.fullmatch(r.stdout.strip())


def test_render_error_in_each_mode() -> None:
    span = Span(file="Acfile", line=2, column=3, source_line="NAME  x")
    e = AcfileError("bad name", span=span, hint="use a.com/x")
    assert render_error(e, "plain") == e.render()
    assert _untimed(render_error(e, "json")) == {
        "event": "error", "message": "bad name", "hint": "use a.com/x",
        "file": "Acfile", "line": 2, "column": 3}
    group = ErrorGroup([e, AcfileError("no NAME given")])
    assert [json.loads(x)["message"] for x in render_error(group, "json").splitlines()] == [
        "bad name", "no NAME given"]
    internal = _untimed(render_error(ValueError("boom"), "json"))
    assert internal == {"event": "error", "message": "internal error: ValueError: boom",
                        "internal": True}
    assert render_error(ValueError("boom"), "tty").startswith(
        "acbuild-py: internal error: ValueError: boom\n    hint: run again with --debug")


def _untimed(line: str) -> dict[str, object]:
    event = json.loads(line)
    assert event.pop("version") == 1 and event.pop("time")
    return event  # type: ignore[no-any-return]


def test_progress_mode_from_argv() -> None:
    assert progress_mode(["build", "--progress", "json", "A"]) == "json"
    assert progress_mode(["--progress=plain", "build"]) == "plain"
    assert progress_mode(["build", "A"]) == "auto"


def test_tty_reporter_stops_its_live_display() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    r = TtyReporter(console=console)
    r.step_started(STEP)
    r.progress("copy", 5, 10)
    assert r._live.is_started
    r.close()
    r.close()  # idempotent
    assert not r._live.is_started


def run_in_pty(args: list[str], cwd: Path) -> tuple[int, str]:
    """The CLI with a terminal for stdin, stdout and stderr, as a person runs it."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(TERM="xterm-256color", COLUMNS="100", XDG_CACHE_HOME=str(cwd / ".cache"))
    proc = subprocess.Popen([sys.executable, "-m", "acbuild", *args], cwd=cwd, env=env,
                            stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    seen = read_until_closed(leader, proc)
    os.close(leader)
    return proc.wait(timeout=60), seen.decode(errors="replace")


def test_tty_mode_renders_under_a_terminal(hello_context: Path, tmp_path: Path) -> None:
    code, text = run_in_pty(["build", "Acfile", "-o", str(tmp_path / "h.aci")], hello_context)
    assert code == 0, text
    assert "Traceback" not in text
    assert "\x1b[" in text  # styled: the tty reporter was chosen
    assert "COPY hello /bin/hello" in text and ID.search(text)


def test_tty_mode_error_is_not_drawn_over(tmp_path: Path) -> None:
    (tmp_path / "Acfile").write_text("BEGIN scratch\nNAME a.com/x\nCOPY missing /x\n")
    code, text = run_in_pty(["build", "Acfile"], tmp_path)
    assert code == 1
    assert "Traceback" not in text
    assert "Acfile:3:" in text and "missing" in text


def test_tty_mode_shows_step_text_verbatim(tmp_path: Path) -> None:
    # ":x:" is an emoji code and "[bold]" markup to rich: neither may be interpreted.
    (tmp_path / "Acfile").write_text(
        "BEGIN scratch\nNAME example.com/x\nENV ROW=app:x:1000 MARK=[bold]\n")
    code, text = run_in_pty(["build", "Acfile", "-o", str(tmp_path / "x.aci")], tmp_path)
    assert code == 0, text
    assert "ENV ROW=app:x:1000 MARK=[bold]" in text
    assert "\u274c" not in text


def test_acbuild_progress_chooses_the_style_and_progress_wins(hello_context: Path,
                                                              tmp_path: Path) -> None:
    from tests.support.terminal import run_in_terminal

    acfile, out = hello_context / "Acfile", tmp_path / "h.aci"
    r = acbuild("build", acfile, "-o", out, env={"ACBUILD_PROGRESS": "json"})
    assert r.code == 0 and all(line.startswith("{") for line in r.stderr.splitlines())
    r = acbuild("build", acfile, "-o", out, "--progress=plain",
                env={"ACBUILD_PROGRESS": "json"})
    assert r.code == 0 and "[1/8] BEGIN scratch" in r.stderr.splitlines()
    screen = run_in_terminal("build", acfile, "-o", out, env={"ACBUILD_PROGRESS": "plain"})
    lines = [*screen.history, *screen.lines]
    assert screen.code == 0 and "[1/8] BEGIN scratch" in lines
    assert not any(line.startswith("[+] Building") for line in lines)
    assert b"\x1b[" not in screen.raw.replace(b"\x1b[?25", b"")


def test_the_summary_counts_the_entries_inspect_counts(hello_context: Path,
                                                       tmp_path: Path) -> None:
    (hello_context / "etc").mkdir()
    (hello_context / "etc" / "motd").write_text("hi\n")
    acfile = hello_context / "Acfile"
    acfile.write_text(acfile.read_text() + "COPY etc /etc\n")
    out = tmp_path / "h.aci"
    r = acbuild("build", "--progress=plain", acfile, "-o", out)
    assert r.code == 0, r.stderr
    built = next(line.split()[-1] for line in r.stderr.splitlines()
                 if line.startswith("entries "))
    shown = acbuild("inspect", "--no-files", out).stdout
    assert f", {built} entries in all" in shown, (built, shown)
