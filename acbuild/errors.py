"""Errors: one base class with an optional place in the Acfile, rendered once by the CLI.

Every stage converts the errors of the libraries it uses into these at its edge, so the CLI
can print any failure as ``Acfile:3:1: error: message`` plus a caret frame, and exit 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from acbuild.terminal import escape, escape_lines


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """A place in a file the user wrote: 1-based line and column, and how many columns."""

    file: str
    line: int
    column: int = 1
    length: int = 1
    source_line: str | None = None

    def frame(self) -> str:
        """The source line with carets under the span, indented four spaces."""
        if self.source_line is None:
            return ""
        # Escaping makes a control character wider: measure the caret on the escaped text.
        text = self.source_line.rstrip("\n").expandtabs(1)
        start = max(self.column - 1, 0)
        width = max(1, min(self.length, max(len(text) - start, 1)))
        head, marked = escape(text[:start]), escape(text[start:start + width])
        return (f"    {head}{marked}{escape(text[start + width:])}\n"
                f"    {' ' * len(head)}{'^' * max(len(marked), 1)}")

    def with_column(self, column: int, length: int = 1) -> Span:
        return Span(
            file=self.file,
            line=self.line,
            column=column,
            length=length,
            source_line=self.source_line,
        )


class AcbuildError(Exception):
    """A failure the user can act on. ``span`` places it in the Acfile when it has a place."""

    def __init__(self, message: str, *, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def render(self) -> str:
        """The message for a terminal: names and paths it quotes from images or Acfiles are
        escaped (acbuild.terminal), so they can neither move the cursor nor fake a line."""
        head = f"error: {escape(self.message)}"
        if self.span is not None:
            head = f"{escape(self.span.file)}:{self.span.line}:{self.span.column}: {head}"
        parts = [head]
        if self.span is not None and (frame := self.span.frame()):
            parts.append(frame)
        if self.hint:
            parts.append(f"    hint: {escape_lines(self.hint)}")
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.render()


class AcfileError(AcbuildError):
    """The Acfile (or its template variables) is wrong: render, parse or plan time."""


class BuildError(AcbuildError):
    """A build step failed while executing (COPY source missing, RUN exit status, ...)."""


class ImageError(AcbuildError):
    """An image or archive is malformed, hostile or unreadable."""


class SandboxError(AcbuildError):
    """The sandbox could not be set up or a program could not be started in it."""


class TrustError(AcbuildError):
    """Signing or verification failed, or a key is not trusted."""


class FetchError(AcbuildError):
    """Discovery or download of an image failed."""


class ConvertError(AcbuildError):
    """A Docker or OCI image could not be converted."""


class ErrorGroup(AcbuildError):
    """Several independent errors found in one pass, reported together."""

    def __init__(self, errors: Sequence[AcbuildError]):
        self.errors = tuple(sorted_errors(errors))
        first = self.errors[0] if self.errors else None
        summary = f"{len(self.errors)} errors"
        if len(self.errors) == 1 and first is not None:
            summary = first.message
        super().__init__(summary, span=first.span if first else None)

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


def sorted_errors(errors: Iterable[AcbuildError]) -> list[AcbuildError]:
    """Errors in file order; errors without a place come last."""

    def key(e: AcbuildError) -> tuple[int, int, int]:
        if e.span is None:
            return (1, 0, 0)
        return (0, e.span.line, e.span.column)

    return sorted(errors, key=key)


def raise_all(errors: Sequence[AcbuildError]) -> None:
    """Raise nothing, the one error, or an ErrorGroup of them all."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ErrorGroup(errors)
