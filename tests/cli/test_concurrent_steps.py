"""Reporters told of steps of several stages at once (stages build side by side): progress
belongs to the step of the thread reporting it, the tty shows every running step, and the
plain log's lines stay whole under the executor's LockedReporter."""

from __future__ import annotations

import io
import json
import re
import threading

from rich.console import Console

from acbuild.build.schedule import LockedReporter
from acbuild.cli.console import JsonReporter, PlainReporter
from acbuild.cli.tty import TtyReporter
from acbuild.report import Reporter, StepInfo

A = StepInfo(number=2, total=9, text="RUN make a", stage="a")
B = StepInfo(number=4, total=9, text="RUN make b", stage="b")


def in_thread(action: object) -> None:
    t = threading.Thread(target=action)  # type: ignore[arg-type]
    t.start()
    t.join()


def test_json_progress_names_the_step_of_its_own_thread() -> None:
    out = io.StringIO()
    r = JsonReporter(out)
    r.step_started(A)

    def other() -> None:
        r.step_started(B)
        r.progress("copy", 1, 2)
        r.step_finished(B, 0.5)

    in_thread(other)
    r.progress("copy", 2, 2)
    r.step_finished(A, 1.0)
    r.progress("compress", 1, None)
    steps = [e["step"] for e in map(json.loads, out.getvalue().splitlines())
             if e["event"] == "progress"]
    assert steps == [4, 2, None]


def test_plain_progress_is_tagged_with_the_step_of_its_own_thread() -> None:
    out = io.StringIO()
    r = PlainReporter(out, verbose=True)
    r.step_started(A)

    def other() -> None:
        r.step_started(B)
        r.progress("copy", 2, 2)

    in_thread(other)
    r.progress("copy", 3, 3)
    lines = out.getvalue().splitlines()
    assert lines[2].startswith("[4/9] copy") and lines[3].startswith("[2/9] copy"), lines


def test_tty_shows_each_running_step_with_its_own_output() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=40)
    r = TtyReporter(console=console)
    try:
        r.step_started(A)
        r.step_started(B)
        r.step_output(A, "compiling a.c")
        r.step_output(B, "compiling b.c")
        r.step_finished(A, 1.0)  # the earlier-started step ends first
        screen = io.StringIO()
        Console(file=screen, width=100).print(r._render())
        text = screen.getvalue()
        assert "[2/9] RUN make a" in text and "[4/9] RUN make b" in text
        assert "compiling b.c" in text and "compiling a.c" not in text  # a's tail folded
        assert [s.seconds is None for s in r._steps] == [False, True]  # b still runs
    finally:
        r.close()


def test_tty_marks_every_step_stopped_by_a_failure() -> None:
    out = io.StringIO()
    r = TtyReporter(console=Console(file=out, force_terminal=True, width=100, height=40))
    r.step_started(A)
    r.step_started(B)
    r.step_output(B, "boom")
    r.close()
    assert [s.failed for s in r._steps] == [True, True]
    assert "boom" in out.getvalue()


def test_plain_lines_stay_whole_when_two_stages_report_at_once() -> None:
    out = io.StringIO()
    r: Reporter = LockedReporter(PlainReporter(out))

    def stage(step: StepInfo) -> None:
        r.step_started(step)
        for i in range(500):
            r.step_output(step, f"line {i} of {step.text}")
        r.step_finished(step, 0.1)

    threads = [threading.Thread(target=stage, args=(s,)) for s in (A, B)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 * 502
    pattern = re.compile(r"\[(2|4)/9\] (RUN make [ab]|\| line \d+ of RUN make [ab]|DONE 0\.1s)")
    assert all(pattern.fullmatch(line) for line in lines)
