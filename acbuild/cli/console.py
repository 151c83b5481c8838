"""Console: the reporters the CLI hands to the library — plain lines for CI, rich for people.

Everything goes to stderr; stdout carries only the result (the image ID), so
``ID=$(acbuild-py build …)`` works in scripts. docs/logs.md describes every mode.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

import click

from acbuild.cli.text import duration, human_size, value_text
from acbuild.errors import AcbuildError, ErrorGroup, Span
from acbuild.report import Field, Reporter, SilentReporter, StepInfo
from acbuild.terminal import escape as safe
from acbuild.terminal import json_dumps

SCHEMA_VERSION = 1  # of the --progress=json events; docs/logs.schema.json describes it

def _where(span: Span | None) -> str:
    return f"{safe(span.file)}:{span.line}:{span.column}: " if span else ""


class PlainReporter:
    """Stable, greppable lines: no colour, no cursor movement (CI logs). Text from images and
    programs is written with its control characters escaped; the log file keeps it raw."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False):
        self._out = stream or sys.stderr
        self._verbose = verbose
        # The step each thread runs: stages build side by side, and a transfer is tagged
        # with the step of the thread that reports it.
        self._steps: dict[int, StepInfo] = {}

    def _line(self, text: str) -> None:
        # Step texts, RUN output, names in messages: none of it may drive the terminal.
        self._out.write(safe(text) + "\n")
        self._out.flush()

    @staticmethod
    def _tag(step: StepInfo) -> str:
        return f"[{step.number}/{step.total}]"

    def step_started(self, step: StepInfo) -> None:
        self._steps[threading.get_ident()] = step
        self._line(f"{self._tag(step)} {step.text}")

    def step_output(self, step: StepInfo, line: str) -> None:
        self._line(f"{self._tag(step)} | {line}")

    def step_partial(self, step: StepInfo, text: str) -> None:
        pass  # a log keeps whole lines; this one arrives with step_output

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False,
                      source: str | None = None) -> None:
        self._steps.pop(threading.get_ident(), None)
        self._line(f"{self._tag(step)} CACHED" if cached
                   else f"{self._tag(step)} DONE {duration(seconds)}")

    def progress(self, what: str, done: int, total: int | None) -> None:
        # Plain logs stay short: one line when a known amount is complete, and only with -v.
        if self._verbose and total is not None and done >= total:
            step = self._steps.get(threading.get_ident())
            tag = f"{self._tag(step)} " if step else ""
            self._line(f"{tag}{what} {human_size(done)}")

    def info(self, message: str) -> None:
        self._line(message)

    def detail(self, message: str) -> None:
        if self._verbose:
            self._line(message)

    def warning(self, message: str, span: Span | None = None) -> None:
        self._line(f"{_where(span)}warning: {message}")

    def summary(self, fields: tuple[Field, ...]) -> None:
        width = max((len(f.label) for f in fields), default=0)
        for f in fields:
            self._line(f"{f.label.ljust(width)}  {value_text(f)}")

    def close(self) -> None:
        pass


class JsonReporter:
    """One JSON object a line on stderr, for machines (schema in docs/logs.md)."""

    def __init__(self, stream: TextIO | None = None):
        self._out = stream or sys.stderr
        self._steps: dict[int, int] = {}  # thread -> the step it runs, as PlainReporter's

    def _emit(self, event: str, **fields: object) -> None:
        self._out.write(json_event(event, **fields) + "\n")
        self._out.flush()

    def step_started(self, step: StepInfo) -> None:
        self._steps[threading.get_ident()] = step.number
        self._emit("step-started", step=step.number, total=step.total, text=step.text,
                   stage=step.stage)

    def step_output(self, step: StepInfo, line: str) -> None:
        self._emit("step-output", step=step.number, line=line)

    def step_partial(self, step: StepInfo, text: str) -> None:
        pass  # the line comes whole as step-output

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False,
                      source: str | None = None) -> None:
        self._steps.pop(threading.get_ident(), None)
        where = {"source": source or "local"} if cached else {}
        self._emit("step-finished", step=step.number, seconds=round(seconds, 3), cached=cached,
                   **where)

    def progress(self, what: str, done: int, total: int | None) -> None:
        self._emit("progress", what=what, done=done, total=total,
                   step=self._steps.get(threading.get_ident()))

    def info(self, message: str) -> None:
        self._emit("info", message=message)

    def detail(self, message: str) -> None:
        self._emit("info", message=message, detail=True)

    def warning(self, message: str, span: Span | None = None) -> None:
        self._emit("warning", message=message, **_span_fields(span))

    def summary(self, fields: tuple[Field, ...]) -> None:
        self._emit("summary", **{f.key: list(f.value) if isinstance(f.value, tuple) else f.value
                                 for f in fields})

    def close(self) -> None:
        pass


class QuietReporter(SilentReporter, PlainReporter):
    """-q: nothing but warnings (PlainReporter's)."""


class QuietJsonReporter(SilentReporter, JsonReporter):
    """-q with --progress=json: nothing but warnings, as JSON events."""


def say(text: str, *, err: bool = False) -> None:
    """Print one line of a verb's result with whatever came from an image escaped."""
    click.echo(safe(text), err=err)


def make_reporter(mode: str, *, quiet: bool = False, verbose: bool = False) -> Reporter:
    if quiet:
        return QuietJsonReporter() if mode == "json" else QuietReporter()
    if mode == "json":
        return JsonReporter()
    if mode == "tty":
        from acbuild.cli.tty import TtyReporter

        return TtyReporter(verbose=verbose)
    return PlainReporter(verbose=verbose)


def close_reporter(reporter: Reporter) -> None:
    """Stop whatever a reporter keeps running (the live display); others have nothing."""
    close = getattr(reporter, "close", None)
    if callable(close):
        close()


# ---- errors, as cli.main prints them ----------------------------------------------------------


def json_event(event: str, **fields: object) -> str:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    return json_dumps({"event": event, "version": SCHEMA_VERSION, "time": stamp, **fields},
                      sort_keys=True)


def _span_fields(span: Span | None) -> dict[str, object]:
    return {"file": span.file, "line": span.line, "column": span.column} if span else {}


def progress_mode(argv: Sequence[str]) -> str:
    """The --progress given in ``argv`` (the click context is gone when an error is shown),
    else $ACBUILD_PROGRESS (as BUILDKIT_PROGRESS), else auto."""
    mode = os.environ.get("ACBUILD_PROGRESS") or "auto"
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--progress" and i + 1 < len(argv):
            mode = argv[i + 1]
        elif arg.startswith("--progress="):
            mode = arg.partition("=")[2]
    return mode


def render_error(error: BaseException, mode: str, *, debug: bool = False) -> str:
    """The text cli.main prints for a failure: the usual frame, or JSON objects in json mode.

    Anything that is not an AcbuildError is an internal error; its traceback is included
    only with ``debug``.
    """
    import traceback  # a failure's path only: every verb's start would pay for it

    if mode != "json":
        if isinstance(error, AcbuildError):
            return error.render()
        head = f"acbuild-py: internal error: {type(error).__name__}: {safe(str(error))}"
        if debug:
            return "".join(traceback.format_exception(error)) + head
        return head + "\n    hint: run again with --debug for a traceback, and please report it"
    if isinstance(error, AcbuildError):
        errors = error.errors if isinstance(error, ErrorGroup) else (error,)
        return "\n".join(
            json_event("error", message=e.message, hint=e.hint, **_span_fields(e.span))
            for e in errors
        )
    extra: dict[str, object] = {"traceback": traceback.format_exception(error)} if debug else {}
    return json_event("error", message=f"internal error: {type(error).__name__}: {error}",
                      internal=True, **extra)
