"""Parse stage: rendered Acfile lines to typed instructions (acbuild.acfile.instructions).

Lark splits each logical line into a keyword and shell-like words; each instruction then
checks its own words (``acbuild.acfile.parse_args``), so every error points at the token written.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from lark import Lark, Token, Transformer, UnexpectedInput
from lark.exceptions import UnexpectedCharacters, VisitError

from acbuild.acfile import instructions as ins
from acbuild.acfile.parse_args import BUILDERS
from acbuild.acfile.parse_words import Line, Piece, Word, check_controls, show

# Values other stages parse too; they live with the other word readers.
from acbuild.acfile.render import Rendered, render
from acbuild.errors import AcbuildError, raise_all

_CONTINUATION = re.compile(r"\\[ \t]*$")
COMMANDS = frozenset({"RUN", "EXEC", "EVENT-HANDLER"})  # words that are a program's argv


def grammar_text() -> str:
    """The Lark grammar, from the installed data package or the source checkout."""
    try:
        return importlib.resources.files("acbuild.grammar").joinpath("acfile.lark").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return (Path(__file__).resolve().parents[2] / "grammar" / "acfile.lark").read_text()


@functools.cache
def _lark() -> Lark:
    return Lark(grammar_text(), parser="lalr", propagate_positions=True)


class _Words(Transformer[Token, tuple[Word, ...]]):
    """Tree of one line to its words; no state, positions come from the tokens."""

    def start(self, tokens: list[Token]) -> tuple[Word, ...]:
        return tuple(
            Word(raw=str(t), value=_unquote(str(t)), start=t.start_pos or 0) for t in tokens
        )


# The pieces of a WORD, as in grammar/acfile.lark.
_PIECE = re.compile(
    r"""'(?P<single>[^']*)'|"(?P<double>(?:[^"\\]|\\[\s\S])*)"|(?P<bare>(?:[^'"\\]|\\[\s\S]?)+)"""
)


def _unquote(raw: str) -> str:
    def piece(m: re.Match[str]) -> str:
        if m["single"] is not None:
            return m["single"]
        if m["double"] is not None:
            return re.sub(r'\\(["\\])', r"\1", m["double"])
        return re.sub(r"\\([\s\S]?)", r"\1", m["bare"])

    return _PIECE.sub(piece, raw)


def parse_text(
    text: str, *, file: str = "Acfile", variables: Mapping[str, str] | None = None
) -> tuple[ins.Instruction, ...]:
    return parse(render(text, file=file, variables=variables or {}))


def parse(rendered: Rendered) -> tuple[ins.Instruction, ...]:
    """All instructions of a rendered Acfile, or every error in it at once."""
    instructions, errors = parse_partly(rendered)
    raise_all(errors)
    return instructions


def parse_partly(
    rendered: Rendered,
) -> tuple[tuple[ins.Instruction, ...], list[AcbuildError]]:
    """The instructions of the lines that parse, and the errors of those that do not: so the
    planner can still report its own errors in the same run."""
    result: list[ins.Instruction] = []
    errors: list[AcbuildError] = []
    for line in _logical_lines(rendered):
        instruction = _instruction(line)
        errors.extend(line.problems)
        if instruction is not None and not line.problems:
            result.append(instruction)
    return tuple(result), errors


def _logical_lines(rendered: Rendered) -> Iterator[Line]:
    pieces: list[Piece] = []
    parts: list[str] = []
    offset = 0
    for line in rendered.lines:
        stripped = line.text.strip()
        if not stripped or stripped.startswith("#"):
            continue  # full-line comments and blank lines, also inside a continuation
        continued = _CONTINUATION.search(line.text)
        body = line.text[: continued.start()] if continued else line.text
        if content := body.strip():
            offset += 1 if parts else 0
            column = len(body) - len(body.lstrip())
            pieces.append(
                Piece(
                    start=offset,
                    length=len(content),
                    number=line.number,
                    physical=line.text,
                    column=column,
                )
            )
            parts.append(content)
            offset += len(content)
        if not continued and parts:
            yield Line(file=rendered.file, text=" ".join(parts), pieces=tuple(pieces))
            pieces, parts, offset = [], [], 0
    if parts:
        yield Line(file=rendered.file, text=" ".join(parts), pieces=tuple(pieces))


def _instruction(line: Line) -> ins.Instruction | None:
    try:
        words = _Words().transform(_lark().parse(line.text))
    except UnexpectedInput as e:
        line.fail(e.pos_in_stream or 0, _lexer_message(line.text, e))
        return None
    except VisitError as e:
        line.fail(0, f"cannot read line: {e.orig_exc}")
        return None
    keyword, args = words[0], words[1:]
    # Paths, names and labels with a NUL or an escape sequence would reach os calls, the
    # manifest and terminals: refuse them where they were written (JSON arrays in strings()).
    command = keyword.raw.upper() in COMMANDS
    if not all([check_controls(line, w, w.value, command=command) for w in words]):
        return None
    builder = BUILDERS.get(keyword.raw.upper())
    if builder is None:
        close = difflib.get_close_matches(keyword.raw.upper(), BUILDERS, n=1)
        mean = f" (did you mean {close[0]!r}?)" if close else ""
        line.fail(keyword, f"unknown instruction {show(keyword.raw)}{mean}")
        return None
    try:
        return builder(line, keyword, args)
    except AcbuildError as e:  # a helper that raises instead of collecting
        line.problems.append(e)
        return None


def _lexer_message(text: str, e: UnexpectedInput) -> str:
    pos = e.pos_in_stream or 0
    if isinstance(e, UnexpectedCharacters) and pos < len(text):
        kind = {'"': "double", "'": "single"}.get(text[pos])
        if kind:
            return f"unterminated {kind}-quoted string"
        return f"unexpected character {text[pos]!r}"
    return "cannot read this line"
