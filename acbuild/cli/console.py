"""Console: the reporters the CLI hands to the library — plain lines for CI, rich for people.

Everything goes to stderr; stdout carries only the result (the image ID), so
``ID=$(acbuild-py build …)`` works in scripts. docs/logs.md describes every mode.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Sequence
from typing import TextIO

import click
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from acbuild.errors import AcbuildError, ErrorGroup, Span
from acbuild.report import Reporter, SilentReporter, StepInfo
from acbuild.terminal import escape as safe
from acbuild.terminal import json_dumps, tty_line

SHORT_ID = 19  # "sha512-" and 12 hex digits, as rkt shows image IDs


def _duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _where(span: Span | None) -> str:
    return f"{safe(span.file)}:{span.line}:{span.column}: " if span else ""


def _summary_rows(rows: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The rows with a short image ID next to the full one, for people to compare."""
    out: list[tuple[str, str]] = []
    for key, value in rows:
        if key == "image ID" and value.startswith("sha512-"):
            out.append(("image ID (short)", value[:SHORT_ID]))
        out.append((key, value))
    return out


class PlainReporter:
    """Stable, greppable lines: no colour, no cursor movement (CI logs)."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False):
        self._out = stream or sys.stderr
        self._verbose = verbose
        self._step: StepInfo | None = None

    def _line(self, text: str) -> None:
        # Step texts, RUN output, names in messages: none of it may drive the terminal.
        self._out.write(safe(text) + "\n")
        self._out.flush()

    @staticmethod
    def _tag(step: StepInfo) -> str:
        return f"[{step.number}/{step.total}]"

    def step_started(self, step: StepInfo) -> None:
        self._step = step
        self._line(f"{self._tag(step)} {step.text}")

    def step_output(self, step: StepInfo, line: str) -> None:
        self._line(f"{self._tag(step)} | {line}")

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False) -> None:
        self._step = None
        self._line(f"{self._tag(step)} CACHED" if cached
                   else f"{self._tag(step)} DONE {_duration(seconds)}")

    def progress(self, what: str, done: int, total: int | None) -> None:
        # Plain logs stay short: one line when a known amount is complete, and only with -v.
        if self._verbose and total is not None and done >= total:
            tag = f"{self._tag(self._step)} " if self._step else ""
            self._line(f"{tag}{what} {human_size(done)}")

    def info(self, message: str) -> None:
        self._line(message)

    def warning(self, message: str, span: Span | None = None) -> None:
        self._line(f"{_where(span)}warning: {message}")

    def summary(self, rows: tuple[tuple[str, str], ...]) -> None:
        width = max((len(k) for k, _ in rows), default=0)
        for key, value in rows:
            self._line(f"{key.ljust(width)}  {value}")

    def close(self) -> None:
        pass


class RichReporter:
    """For a person at a terminal: a live view of the running step (spinner, elapsed time,
    byte progress bars) above which finished steps and RUN output scroll."""

    def __init__(self, *, verbose: bool = False, console: Console | None = None):
        self._console = console or Console(stderr=True, highlight=False, emoji=False)
        self._verbose = verbose
        self._steps = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                               TimeElapsedColumn(), console=self._console)
        self._bytes = Progress(TextColumn("  {task.description:>8}"), BarColumn(),
                               DownloadColumn(), TransferSpeedColumn(), console=self._console)
        self._live = Live(Group(self._steps, self._bytes), console=self._console,
                          transient=True, refresh_per_second=8, redirect_stdout=False,
                          redirect_stderr=False)
        self._task: TaskID | None = None
        self._bars: dict[str, TaskID] = {}

    def _print(self, markup: str) -> None:
        if not self._live.is_started:
            self._live.start()
        self._live.console.print(markup)

    def step_started(self, step: StepInfo) -> None:
        text = escape(safe(step.text))
        self._print(f"[bold blue][{step.number}/{step.total}][/] [bold]{text}[/]")
        self._clear_step()
        self._task = self._steps.add_task(f"[{step.number}/{step.total}] {text}", total=None)

    def step_output(self, step: StepInfo, line: str) -> None:
        self._print(f"  [dim]│[/] {escape(tty_line(line))}")

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False) -> None:
        self._clear_step()
        if cached:
            self._print(f"  [cyan]CACHED[/] [dim][{step.number}/{step.total}][/]")
        elif self._verbose or seconds >= 0.5:
            self._print(f"  [green]✓[/] [dim]{_duration(seconds)}[/]")

    def _clear_step(self) -> None:
        if self._task is not None:
            self._steps.remove_task(self._task)
            self._task = None
        for bar in self._bars.values():
            self._bytes.remove_task(bar)
        self._bars.clear()

    def progress(self, what: str, done: int, total: int | None) -> None:
        if not self._live.is_started:
            self._live.start()
        bar = self._bars.get(what)
        if bar is None:
            bar = self._bars[what] = self._bytes.add_task(escape(safe(what)), total=total)
        self._bytes.update(bar, completed=done, total=total)

    def info(self, message: str) -> None:
        self._print(escape(safe(message)))

    def warning(self, message: str, span: Span | None = None) -> None:
        self._print(f"[yellow]{escape(_where(span))}warning:[/] {escape(safe(message))}")

    def summary(self, rows: tuple[tuple[str, str], ...]) -> None:
        self.close()
        table = Table(show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(overflow="fold")  # a full image ID is never cut short
        for key, value in _summary_rows(rows):
            table.add_row(escape(safe(key)), escape(safe(value)))
        self._console.print(table)

    def close(self) -> None:
        """Stop the live display (idempotent): before the summary, on errors, on ^C."""
        self._clear_step()
        if self._live.is_started:
            self._live.stop()


class JsonReporter:
    """One JSON object a line on stderr, for machines (schema in docs/logs.md)."""

    def __init__(self, stream: TextIO | None = None):
        self._out = stream or sys.stderr
        self._step: int | None = None

    def _emit(self, event: str, **fields: object) -> None:
        self._out.write(json_event(event, **fields) + "\n")
        self._out.flush()

    def step_started(self, step: StepInfo) -> None:
        self._step = step.number
        self._emit("step-started", step=step.number, total=step.total, text=step.text,
                   stage=step.stage)

    def step_output(self, step: StepInfo, line: str) -> None:
        self._emit("step-output", step=step.number, line=line)

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False) -> None:
        self._step = None
        self._emit("step-finished", step=step.number, seconds=round(seconds, 3), cached=cached)

    def progress(self, what: str, done: int, total: int | None) -> None:
        self._emit("progress", what=what, done=done, total=total, step=self._step)

    def info(self, message: str) -> None:
        self._emit("info", message=message)

    def warning(self, message: str, span: Span | None = None) -> None:
        self._emit("warning", message=message, **_span_fields(span))

    def summary(self, rows: tuple[tuple[str, str], ...]) -> None:
        self._emit("summary", **{_json_key(k): v for k, v in _summary_rows(rows)})

    def close(self) -> None:
        pass


class QuietReporter(SilentReporter, PlainReporter):
    """-q: nothing but warnings (PlainReporter's)."""


def say(text: str, *, err: bool = False) -> None:
    """Print one line of a verb's result with whatever came from an image escaped."""
    click.echo(safe(text), err=err)


def make_reporter(mode: str, *, quiet: bool = False, verbose: bool = False) -> Reporter:
    if quiet:
        return QuietReporter()
    if mode == "json":
        return JsonReporter()
    if mode == "tty":
        return RichReporter(verbose=verbose)
    return PlainReporter(verbose=verbose)


def close_reporter(reporter: Reporter) -> None:
    """Stop whatever a reporter keeps running (the live display); others have nothing."""
    close = getattr(reporter, "close", None)
    if callable(close):
        close()


# ---- errors, as cli.main prints them ----------------------------------------------------------


def json_event(event: str, **fields: object) -> str:
    return json_dumps({"event": event, **fields}, sort_keys=True)


def _json_key(label: str) -> str:
    """A summary row's label as a JSON key: "image ID (short)" -> "image_id_short"."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _span_fields(span: Span | None) -> dict[str, object]:
    return {"file": span.file, "line": span.line, "column": span.column} if span else {}


def progress_mode(argv: Sequence[str]) -> str:
    """The --progress given in ``argv`` (the click context is gone when an error is shown)."""
    mode = "auto"
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
