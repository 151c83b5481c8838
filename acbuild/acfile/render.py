"""Render stage: the Acfile is a jinja2 template, rendered before it is parsed.

Rendered lines keep the number of the source line they came from, so errors found later point
at the line the user wrote even when ``{% if %}`` or ``{% for %}`` blocks move lines around.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import nodes as jinja2_nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from acbuild.acfile.confine import LimitExceeded, Limits, run_confined
from acbuild.acfile.variables import checked_name, checked_value, parse_var
from acbuild.errors import AcfileError, Span
from acbuild.fs.regular import open_regular

_TEMPLATE_NAME = "<template>"  # jinja's code name for templates made by from_string
_TAG = re.compile(r"\{[{%#].*?(?:[}%#]\}|$)")
# Private-use characters never appear in a sane Acfile; one absent from the input delimits
# the line markers so the user's text can never be mistaken for a marker.
_DELIMITERS = tuple(chr(c) for c in range(0xE000, 0xE100))


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedLine:
    number: int  # 1-based line in the source file
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendered:
    file: str
    lines: tuple[RenderedLine, ...]
    variables: tuple[tuple[str, str], ...]  # resolved variables, sorted by name


def load_variables(var_args: Sequence[str], var_files: Sequence[Path]) -> dict[str, str]:
    """Variables from ``--var-file`` files (in order) overridden by ``--var KEY=VALUE``."""
    variables: dict[str, str] = {}
    for path in var_files:
        variables.update(_load_var_file(path))
    for arg in var_args:
        key, value = parse_var(arg)
        variables[key] = value
    return variables


def _load_var_file(path: Path) -> dict[str, str]:
    try:
        with open_regular(path) as f:
            data = tomllib.load(f)
    except OSError as e:
        raise AcfileError(f"cannot read variable file {str(path)!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(path, e) from None
    return {checked_name(k, str(path)): _scalar(path, k, v) for k, v in data.items()}


def _toml_error(path: Path, e: tomllib.TOMLDecodeError) -> AcfileError:
    text = str(e)
    place = re.search(r"\(at line (\d+), column (\d+)\)$", text)
    message = text[: place.start()].strip() if place else text
    span = None
    if place:
        span = Span(file=str(path), line=int(place[1]), column=int(place[2]))
    return AcfileError(f"invalid TOML in variable file: {message}", span=span)


def _scalar(path: Path, key: str, value: object) -> str:
    match value:
        case bool():
            return "true" if value else "false"
        case str() | int() | float():
            return checked_value(str(value), key, str(path))
    raise AcfileError(
        f"{path}: variable {key!r} must be a string, number or boolean, "
        f"not a {type(value).__name__}"
    )


def render(text: str, *, file: str, variables: Mapping[str, str]) -> Rendered:
    """Render ``text`` with ``variables`` and split it into lines that know their source.

    The template runs in a forked child under memory, CPU and wall-clock limits (see
    acbuild.acfile.confine): no expression can take the host's memory or hang the build."""
    delimiter = _delimiter(text, variables)
    values = dict(variables)
    try:
        output = run_confined(lambda: _render_output(text, file, values, delimiter),
                              Limits(seconds=RENDER_SECONDS, memory=RENDER_MEMORY))
    except LimitExceeded as e:
        # A single call cannot say where it was: point at the first line with a tag.
        source_lines = _source_lines(text)
        first = next((n for n, line in enumerate(source_lines, 1) if _TAG.search(line)), 1)
        span = _span(file, source_lines, first, None)
        if e.what == "time":
            raise AcfileError(f"template rendering took longer than {RENDER_SECONDS} s",
                              span=span, hint="look for loops that never end") from None
        raise AcfileError(
            f"template rendering exceeded the memory limit ({RENDER_MEMORY >> 20} MiB)",
            span=span) from None
    return Rendered(
        file=file,
        lines=tuple(_numbered_lines(output, delimiter)),
        variables=tuple(sorted(variables.items())),
    )


def _render_output(text: str, file: str, variables: dict[str, str], delimiter: str) -> str:
    """The rendered text with its line markers (runs in the confined child)."""
    env = _environment(delimiter)
    source_lines = _source_lines(text)
    try:
        template = env.from_string(text)
    except jinja2.TemplateSyntaxError as e:
        raise _syntax_error(e, file, source_lines) from None
    except RecursionError:
        span = _span(file, source_lines, 1, None)
        raise AcfileError("template nested too deeply", span=span) from None
    try:
        return _bounded_output(template.generate(variables))
    except MemoryError:
        raise
    except Exception as e:  # template expressions can raise anything; all are user errors
        raise _runtime_error(e, file, source_lines) from None


def _delimiter(text: str, variables: Mapping[str, str]) -> str:
    for candidate in _DELIMITERS:
        if candidate not in text and not any(candidate in v for v in variables.values()):
            return candidate
    raise AcfileError("the Acfile uses every character of U+E000..U+E0FF; cannot render it")


class _LineMarks(Extension):
    """Put a marker naming the source line at the start of every piece of template text and
    before every ``{{ … }}``, so the rendered output says where each line came from."""

    def filter_stream(self, stream: TokenStream) -> Iterator[Token]:
        d: str = self.environment.acbuild_delimiter  # type: ignore[attr-defined]  # set by extend()
        for token in stream:
            if token.type == "variable_begin":
                yield Token(token.lineno, "data", f"{d}{token.lineno}{d}")
            elif token.type == "data":
                token = Token(token.lineno, "data", _mark_data(token.value, token.lineno, d))
            yield token


def _mark_data(value: str, lineno: int, d: str) -> str:
    pieces = value.split("\n")
    last = len(pieces) - 1
    return "\n".join(
        # Nothing to mark after a final newline: the next line starts with a tag.
        piece if offset == last and offset and not piece else f"{d}{lineno + offset}{d}{piece}"
        for offset, piece in enumerate(pieces)
    )


# Bounds on what a template may make: an Acfile is text a person reads, never gigabytes.
MAX_VALUE = 1 << 20  # one string or list built by * or +
MAX_OUTPUT = 16 << 20  # the whole rendered Acfile
MAX_EXPONENT = 4096
RENDER_SECONDS = 10  # wall clock and CPU time of the rendering child
RENDER_MEMORY = 512 << 20  # address space the rendering child may add


def _bounded_output(chunks: Iterator[str]) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise SecurityError(f"the rendered Acfile is larger than {MAX_OUTPUT} characters")
        out.append(chunk)
    return "".join(out)


class _BoundedSandbox(SandboxedEnvironment):
    """jinja2's sandbox stops attribute tricks but not ``'a' * 10**10``: bound the operators
    that make values grow."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, Sized) and isinstance(times, int) and \
                        len(seq) * times > MAX_VALUE:
                    raise SecurityError(f"a value of more than {MAX_VALUE} items is too large")
        if operator == "+" and isinstance(left, Sized) and isinstance(right, Sized) and \
                len(left) + len(right) > MAX_VALUE:
            raise SecurityError(f"a value of more than {MAX_VALUE} items is too large")
        return super().call_binop(context, operator, left, right)


def _environment(delimiter: str) -> jinja2.Environment:
    env = _BoundedSandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        extensions=[_LineMarks],
    )
    env.extend(acbuild_delimiter=delimiter)
    return env


def _numbered_lines(output: str, d: str) -> Iterator[RenderedLine]:
    marker = re.compile(re.escape(d) + r"(\d+)" + re.escape(d))
    if output.endswith("\n"):
        output = output[:-1]
    number = 1
    for raw in output.split("\n"):
        marks = marker.findall(raw)
        # A line without a marker came from inside a multi-line {{ value }}: it belongs to the
        # line that value was written on, the last one marked.
        line = int(marks[0]) if marks else number
        yield RenderedLine(number=line, text=marker.sub("", raw))
        if marks:
            number = int(marks[-1])


def _source_lines(text: str) -> tuple[str, ...]:
    # jinja counts lines after normalising every newline convention to "\n"
    return tuple(re.split(r"\r\n|\r|\n", text))


def _span(file: str, source_lines: Sequence[str], line: int, hint_name: str | None) -> Span:
    source = source_lines[line - 1] if 0 < line <= len(source_lines) else None
    column, length = 1, 1
    if source is not None:
        column, length = _locate(source, hint_name)
    return Span(file=file, line=line, column=column, length=length, source_line=source)


def _locate(source: str, name: str | None) -> tuple[int, int]:
    """Column and length of ``name`` inside a template tag of ``source``, else of the first
    tag, else the whole line."""
    tags = list(_TAG.finditer(source))
    if name:
        word = re.compile(r"(?<![\w.])" + re.escape(name) + r"(?!\w)")
        for tag in tags:
            if found := word.search(source, tag.start(), tag.end()):
                return found.start() + 1, len(name)
    if tags:
        return tags[0].start() + 1, tags[0].end() - tags[0].start()
    stripped = source.lstrip()
    return len(source) - len(stripped) + 1, max(len(stripped.rstrip()), 1)


def _syntax_error(
    e: jinja2.TemplateSyntaxError, file: str, source_lines: Sequence[str]
) -> AcfileError:
    line = min(max(e.lineno, 1), max(len(source_lines), 1))
    name = re.search(r"unknown tag '([^']+)'", e.message or "")
    message = (e.message or "syntax error").rstrip(".")
    span = _span(file, source_lines, line, name[1] if name else None)
    return AcfileError(f"template syntax error: {message}", span=span)


def _runtime_error(e: Exception, file: str, source_lines: Sequence[str]) -> AcfileError:
    line = _template_line(e.__traceback__)
    if isinstance(e, jinja2.UndefinedError):
        name = re.match(r"'([^']+)' is undefined", e.message or "")
        if name:
            return AcfileError(
                f"undefined template variable {name[1]!r}",
                span=_span(file, source_lines, line, name[1]) if line else None,
                hint=f"pass it with --var {name[1]}=VALUE or in a --var-file",
            )
        message = f"undefined value: {e.message}"
    elif isinstance(e, jinja2.TemplateError):
        message = f"template error: {e.message or e}"
    else:
        message = f"template error: {type(e).__name__}: {e}"
    return AcfileError(message, span=_span(file, source_lines, line, None) if line else None)


def _template_line(tb: TracebackType | None) -> int | None:
    """jinja rewrites tracebacks so template frames carry template line numbers."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_NAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def unused_variables(text: str, names: Sequence[str]) -> tuple[str, ...]:
    """Which of ``names`` the template never mentions (as BuildKit warns of unused build
    args); () when the text is not a template jinja2 can parse (render says why)."""
    # Names read anywhere in the parsed tree. Not jinja2.meta, which compiles the template
    # and so folds its constant expressions here, outside the confined render: a template
    # such as {{ [1]*10**9 }} would take the parent's memory.
    try:
        tree = jinja2.Environment().parse(text)
    except (jinja2.TemplateSyntaxError, RecursionError):
        return ()
    mentioned = {n.name for n in tree.find_all(jinja2_nodes.Name) if n.ctx == "load"}
    return tuple(sorted(set(names) - mentioned))
