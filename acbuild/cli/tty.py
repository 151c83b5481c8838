"""The live log for a person at a terminal, after BuildKit's tty progress.

A header with the elapsed time and steps done of total; one line a step, folded when it
ends (its time, or CACHED); while a step runs, the last lines of its output under it and a
bar for each transfer, with a percentage and an ETA where the total is known. Events only
update state: rich redraws ten times a second from it, so a RUN that prints fast costs
little. What a program prints is shown as a terminal would show the line (carriage returns
and backspaces applied) and with control characters escaped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from acbuild.cli.text import duration, human_size, value_text
from acbuild.errors import Span
from acbuild.report import Field, StepInfo
from acbuild.terminal import escape, to_ascii, tty_line

TAIL = 6  # lines of a running step's output on screen
KEEP = 200  # lines of it kept to show when the step fails (the log file has them all)


@dataclass(slots=True)
class _Step:
    info: StepInfo
    started: float
    seconds: float | None = None  # None while it runs
    cached: bool = False
    failed: bool = False
    output: deque[str] = field(default_factory=lambda: deque(maxlen=KEEP))
    partial: str = ""  # the unfinished last line, as the terminal would show it now


@dataclass(slots=True)
class _Bar:
    what: str
    done: int
    total: int | None
    started: float


class TtyReporter:
    def __init__(self, *, verbose: bool = False, console: Console | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console or Console(stderr=True, highlight=False, emoji=False)
        # A terminal without UTF-8 (cli.charset): text made ASCII before rich measures it,
        # and lines cut rather than ended with an ellipsis.
        self._ascii = not self._console.encoding.startswith("utf")
        self._cut: Literal["crop", "ellipsis"] = "crop" if self._ascii else "ellipsis"
        self._verbose = verbose
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._steps: list[_Step] = []  # drawn in the live area, oldest first
        self._committed = 0  # steps printed above the live area for want of room
        self._total = 0
        # Per thread: stages build side by side, each with its own transfers.
        self._bars: dict[tuple[int, str], _Bar] = {}
        self._closed = False
        self._live = Live(console=self._console, get_renderable=self._render,
                          refresh_per_second=10, transient=False, redirect_stdout=False,
                          redirect_stderr=False)

    # -- events --------------------------------------------------------------------------------

    def step_started(self, step: StepInfo) -> None:
        with self._lock:
            self._total = step.total
            self._steps.append(_Step(info=step, started=self._clock()))
            overflow = self._overflow()
        for old in overflow:  # printed outside the lock: printing redraws the live area
            self._live.console.print(self._step_line(old, old.started))
        self._start()

    def step_output(self, step: StepInfo, line: str) -> None:
        shown = self._safe(tty_line(line))
        with self._lock:
            running = self._find(step)
            if running is not None:
                running.output.append(shown)
                running.partial = ""

    def step_partial(self, step: StepInfo, text: str) -> None:
        shown = self._safe(tty_line(text))
        with self._lock:
            running = self._find(step)
            if running is not None:
                running.partial = shown

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False,
                      source: str | None = None) -> None:
        # A step from a remote cache is CACHED like a local one; an info line named it.
        with self._lock:
            running = self._find(step)
            if running is not None:
                running.seconds, running.cached = seconds, cached
            thread = threading.get_ident()
            for key in [k for k in self._bars if k[0] == thread]:
                del self._bars[key]
        self._start()

    def progress(self, what: str, done: int, total: int | None) -> None:
        key = (threading.get_ident(), what)
        with self._lock:
            bar = self._bars.get(key)
            if bar is None:
                bar = self._bars[key] = _Bar(what=what, done=done, total=total,
                                             started=self._clock())
            bar.done, bar.total = done, total
            if total is not None and done >= total and not self._running():
                del self._bars[key]  # a transfer outside a step leaves nothing behind
        self._start()

    def info(self, message: str) -> None:
        self._print(Text(self._safe(escape(message))))

    def detail(self, message: str) -> None:
        if self._verbose:
            self._print(Text(self._safe(escape(message)), style="dim"))

    def warning(self, message: str, span: Span | None = None) -> None:
        where = f"{span.file}:{span.line}:{span.column}: " if span else ""
        self._print(Text.assemble((f"{self._safe(escape(where))}warning:", "yellow"),
                                  " " + self._safe(escape(message))))

    def summary(self, fields: tuple[Field, ...]) -> None:
        self.close()
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for f in fields:
            table.add_row(Text(f.label), Text(self._safe(escape(value_text(f)))))
        self._console.print(table)

    def close(self) -> None:
        """Stop the live area, leaving the folded steps (idempotent; also on errors and ^C,
        when the step still running is the one that failed and its output is shown)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            # The step that failed, and those of other stages stopped because it did.
            failed = self._running()
            for step in failed:
                step.failed = True
                step.seconds = self._clock() - step.started
            self._bars.clear()
        if self._live.is_started:
            self._live.refresh()
            self._live.stop()
        for step in failed:
            if len(failed) > 1 and step.output:
                self._console.print(Text(f" => [{step.info.number}/{step.info.total}]",
                                         style="red"))
            for line in step.output:
                self._console.print(Text(" => => # " + line, style="red"), overflow="fold")

    # -- drawing -------------------------------------------------------------------------------

    def _safe(self, text: str) -> str:
        return to_ascii(text) if self._ascii else text

    def _start(self) -> None:
        if not self._live.is_started and not self._closed:
            self._live.start()

    def _print(self, text: Text) -> None:
        # Above the live area while it runs; plain output before and after it.
        (self._live.console if self._live.is_started else self._console).print(text)

    def _running(self) -> list[_Step]:
        return [s for s in self._steps if s.seconds is None and not s.failed]

    def _find(self, info: StepInfo) -> _Step | None:
        """The running step ``info`` describes (steps of several stages run at once)."""
        return next((s for s in reversed(self._steps)
                     if s.info == info and s.seconds is None and not s.failed), None)

    def _overflow(self) -> list[_Step]:
        """The oldest finished steps, taken out of the live area when it would not fit on
        the screen (with the header, a tail and a few bars); they are printed above it."""
        room = max(self._console.size.height - 2 - TAIL - 3, 3)
        out = []
        while len(self._steps) > room and self._steps[0].seconds is not None:
            out.append(self._steps.pop(0))
        self._committed += len(out)
        return out

    def _render(self) -> RenderableType:
        with self._lock:
            now = self._clock()
            lines: list[RenderableType] = []
            if self._steps:
                lines.append(self._header(now))
            lines += [self._step_line(s, now) for s in self._steps]
            running = [s for s in self._running() if s.output or s.partial]
            # The screen keeps its height: several running steps share the tail's lines.
            tail = max(TAIL // len(running), 2) if running else 0
            for step in running:
                if len(running) > 1:
                    lines.append(Text(f" => [{step.info.number}/{step.info.total}]",
                                      style="dim", no_wrap=True))
                shown = [*step.output, step.partial] if step.partial else list(step.output)
                for line in shown[-tail:]:
                    lines.append(Text(" => => # " + line, style="dim", no_wrap=True,
                                      overflow=self._cut))
            lines += [self._bar_line(b, now) for b in self._bars.values()]
            return Group(*lines)

    def _header(self, now: float) -> Text:
        done = self._committed + sum(1 for s in self._steps if s.seconds is not None
                                     and not s.failed)
        failed = any(s.failed for s in self._steps)
        state = (" FAILED" if failed else " FINISHED") if self._closed else ""
        return Text(f"[+] Building {now - self._started:.1f}s ({done}/{self._total}){state}",
                    style="bold red" if failed else "bold blue")

    def _step_line(self, step: _Step, now: float) -> Table:
        grid = Table.grid(expand=True)
        grid.add_column(no_wrap=True, overflow=self._cut, ratio=1)
        grid.add_column(justify="right", no_wrap=True, width=8)
        tag = f"[{step.info.number}/{step.info.total}]"
        text = Text(" => ")
        if step.failed:
            text.append("ERROR ", style="bold red")
        elif step.cached:
            text.append("CACHED ", style="cyan")
        text.append(tag + " ", style="blue")
        text.append(self._safe(escape(step.info.text)),
                    style="bold" if step.seconds is None else "")
        seconds = step.seconds if step.seconds is not None else now - step.started
        grid.add_row(text, Text(duration(seconds), style="dim" if step.seconds is not None
                                else "yellow"))
        return grid

    def _bar_line(self, bar: _Bar, now: float) -> Table:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=12, no_wrap=True)  # " => compress"
        grid.add_column(width=24)
        grid.add_column(no_wrap=True)
        elapsed = max(now - bar.started, 1e-6)
        rate = bar.done / elapsed
        if bar.total:
            share = min(bar.done / bar.total, 1.0)
            left = (bar.total - bar.done) / rate if rate > 0 else 0.0
            numbers = (f"{share:4.0%}  {human_size(bar.done)}/{human_size(bar.total)}"
                       f"  ETA {duration(max(left, 0.0))}")
            shown: RenderableType = ProgressBar(total=bar.total, completed=bar.done, width=24)
        else:
            numbers = f"{human_size(bar.done)}  {human_size(rate)}/s"
            shown = ProgressBar(total=None, width=24, pulse=True, animation_time=now)
        grid.add_row(Text(f"    {bar.what}", style="dim"), shown, Text(numbers, style="dim"))
        return grid
