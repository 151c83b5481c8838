"""Reporting: the protocol through which the library tells the CLI what is happening.

The library never prints. It calls a Reporter; the CLI chooses how that looks (rich on a
terminal, plain lines in CI, JSON for machines). NullReporter is for tests and library use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from acbuild.errors import Span


@dataclass(frozen=True, slots=True, kw_only=True)
class StepInfo:
    """What a reporter needs to know of a step: its place in the build and its text."""

    number: int  # 1-based, across all built stages
    total: int
    text: str  # the instruction as written, e.g. "COPY hello /bin/hello"
    stage: str | None = None


Value = str | int | float | tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Field:
    """One row of a closing summary: typed, so JSON gets numbers and people get units."""

    key: str  # the JSON key, e.g. "size"
    label: str  # what people read, e.g. "compressed size"
    value: Value
    unit: Literal["", "bytes", "seconds"] = ""


class Reporter(Protocol):
    def step_started(self, step: StepInfo) -> None: ...

    def step_output(self, step: StepInfo, line: str) -> None:
        """One line of a RUN step's output (without the newline)."""

    def step_partial(self, step: StepInfo, text: str) -> None:
        """The unfinished last line of a RUN step's output as it stands (a progress bar that
        a program redraws with ``\\r``); the step's next step_output is that line whole."""

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False,
                      source: str | None = None) -> None:
        """``source``: where a cached step came from, e.g. ``registry://host/repo`` (None:
        the local cache)."""

    def progress(self, what: str, done: int, total: int | None) -> None:
        """Bytes done of total (None when unknown) for COPY, extraction, compression, download."""

    def info(self, message: str) -> None: ...

    def detail(self, message: str) -> None:
        """A detail shown only with -v (e.g. which cache entry was used)."""

    def warning(self, message: str, span: Span | None = None) -> None: ...

    def summary(self, fields: tuple[Field, ...]) -> None:
        """The closing table of a build, convert or export."""


class SilentReporter:
    """Says nothing of steps, output, progress, information or the summary: a base for
    reporters that keep only part of what they are told. Warnings are left to the subclass."""

    def step_started(self, step: StepInfo) -> None:
        pass

    def step_output(self, step: StepInfo, line: str) -> None:
        pass

    def step_partial(self, step: StepInfo, text: str) -> None:
        pass

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False,
                      source: str | None = None) -> None:
        pass

    def progress(self, what: str, done: int, total: int | None) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def detail(self, message: str) -> None:
        pass

    def summary(self, fields: tuple[Field, ...]) -> None:
        pass


class NullReporter(SilentReporter):
    """Swallows everything; collects warnings and step output so tests can look at them."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.output: list[str] = []

    def step_output(self, step: StepInfo, line: str) -> None:
        self.output.append(line)

    def warning(self, message: str, span: Span | None = None) -> None:
        self.warnings.append(message)


class HeldReporter:
    """Keeps what it is told until ``tell`` passes it on, in the order it came: work done
    ahead in another thread reports when its result is used, as if it had been done then."""

    def __init__(self) -> None:
        self._held: list[Callable[[Reporter], None]] = []

    def tell(self, reporter: Reporter) -> None:
        for event in self._held:
            event(reporter)
        self._held.clear()

    def step_started(self, step: StepInfo) -> None:
        self._held.append(lambda r: r.step_started(step))

    def step_output(self, step: StepInfo, line: str) -> None:
        self._held.append(lambda r: r.step_output(step, line))

    def step_partial(self, step: StepInfo, text: str) -> None:
        self._held.append(lambda r: r.step_partial(step, text))

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False,
                      source: str | None = None) -> None:
        self._held.append(lambda r: r.step_finished(step, seconds, cached=cached,
                                                    source=source))

    def progress(self, what: str, done: int, total: int | None) -> None:
        self._held.append(lambda r: r.progress(what, done, total))

    def info(self, message: str) -> None:
        self._held.append(lambda r: r.info(message))

    def detail(self, message: str) -> None:
        self._held.append(lambda r: r.detail(message))

    def warning(self, message: str, span: Span | None = None) -> None:
        self._held.append(lambda r: r.warning(message, span))

    def summary(self, fields: tuple[Field, ...]) -> None:
        self._held.append(lambda r: r.summary(fields))
