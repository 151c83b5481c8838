"""Console: the reporters the CLI hands to the library — plain lines for CI, rich for people.

Everything goes to stderr; stdout carries only the result (the image ID), so
``ID=$(acbuild-py build …)`` works in scripts.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from acbuild.errors import Span
from acbuild.report import Reporter, StepInfo


def _duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class PlainReporter:
    """Stable, greppable lines: no colour, no cursor movement (CI logs)."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False):
        self._out = stream or sys.stderr
        self._verbose = verbose

    def _line(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def step_started(self, step: StepInfo) -> None:
        self._line(f"[{step.number}/{step.total}] {step.text}")

    def step_output(self, step: StepInfo, line: str) -> None:
        self._line(f"[{step.number}/{step.total}] | {line}")

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False) -> None:
        if cached:
            self._line(f"[{step.number}/{step.total}] CACHED")
        elif self._verbose or seconds >= 0.5:
            self._line(f"[{step.number}/{step.total}] done in {_duration(seconds)}")

    def progress(self, what: str, done: int, total: int | None) -> None:
        pass  # plain logs stay short: progress is shown only in tty and json modes

    def info(self, message: str) -> None:
        self._line(message)

    def warning(self, message: str, span: Span | None = None) -> None:
        where = f"{span.file}:{span.line}:{span.column}: " if span else ""
        self._line(f"{where}warning: {message}")

    def summary(self, rows: tuple[tuple[str, str], ...]) -> None:
        width = max((len(k) for k, _ in rows), default=0)
        for key, value in rows:
            self._line(f"{key.ljust(width)}  {value}")


class RichReporter:
    """For a person at a terminal: coloured step lines with durations."""

    def __init__(self, *, verbose: bool = False):
        self._console = Console(stderr=True, highlight=False)
        self._verbose = verbose
        self._started: dict[int, float] = {}

    def step_started(self, step: StepInfo) -> None:
        self._started[step.number] = time.monotonic()
        self._console.print(
            f"[bold blue][{step.number}/{step.total}][/] [bold]{escape(step.text)}[/]"
        )

    def step_output(self, step: StepInfo, line: str) -> None:
        self._console.print(f"  [dim]│[/] {escape(line)}")

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False) -> None:
        if cached:
            self._console.print("  [cyan]CACHED[/]")
        elif self._verbose or seconds >= 0.5:
            self._console.print(f"  [green]✓[/] [dim]{_duration(seconds)}[/]")

    def progress(self, what: str, done: int, total: int | None) -> None:
        pass

    def info(self, message: str) -> None:
        self._console.print(escape(message))

    def warning(self, message: str, span: Span | None = None) -> None:
        where = f"{span.file}:{span.line}:{span.column}: " if span else ""
        self._console.print(f"[yellow]{escape(where)}warning:[/] {escape(message)}")

    def summary(self, rows: tuple[tuple[str, str], ...]) -> None:
        table = Table(show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(escape(key), escape(value))
        self._console.print(table)


class JsonReporter:
    """One JSON object a line on stderr, for machines."""

    def __init__(self, stream: TextIO | None = None):
        self._out = stream or sys.stderr

    def _emit(self, event: str, **fields: object) -> None:
        self._out.write(json.dumps({"event": event, **fields}, sort_keys=True) + "\n")
        self._out.flush()

    def step_started(self, step: StepInfo) -> None:
        self._emit("step-started", step=step.number, total=step.total, text=step.text)

    def step_output(self, step: StepInfo, line: str) -> None:
        self._emit("step-output", step=step.number, line=line)

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False) -> None:
        self._emit("step-finished", step=step.number, seconds=round(seconds, 3), cached=cached)

    def progress(self, what: str, done: int, total: int | None) -> None:
        self._emit("progress", what=what, done=done, total=total)

    def info(self, message: str) -> None:
        self._emit("info", message=message)

    def warning(self, message: str, span: Span | None = None) -> None:
        where = {"file": span.file, "line": span.line, "column": span.column} if span else {}
        self._emit("warning", message=message, **where)

    def summary(self, rows: tuple[tuple[str, str], ...]) -> None:
        self._emit("summary", **{k.replace(" ", "_"): v for k, v in rows})


class QuietReporter:
    """-q: nothing but warnings."""

    def __init__(self) -> None:
        self._plain = PlainReporter()

    def step_started(self, step: StepInfo) -> None:
        pass

    def step_output(self, step: StepInfo, line: str) -> None:
        pass

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False) -> None:
        pass

    def progress(self, what: str, done: int, total: int | None) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str, span: Span | None = None) -> None:
        self._plain.warning(message, span)

    def summary(self, rows: tuple[tuple[str, str], ...]) -> None:
        pass


def make_reporter(mode: str, *, quiet: bool = False, verbose: bool = False) -> Reporter:
    if quiet:
        return QuietReporter()
    if mode == "json":
        return JsonReporter()
    if mode == "tty":
        return RichReporter(verbose=verbose)
    return PlainReporter(verbose=verbose)
