"""Parse stage: the words of one logical line, where each stands, and what they hold.

Options and positionals, numbers, KEY=VALUE pairs, JSON values and the values other stages
parse too (durations, image references); every problem is recorded against its word.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from acbuild.errors import AcbuildError, AcfileError, Span

_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)([smh]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
NUMBER = re.compile(r"\d{1,19}")
MAX_DURATION = 365 * 86400
_SHOWN = 40  # characters of a user's word quoted in a message

Kind = Literal["flag", "value", "many"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Word:
    """One word of a line: as written (``raw``), unquoted (``value``), and where it starts."""

    raw: str
    value: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class Piece:
    """The share of one physical line in a logical line."""

    start: int  # offset in the logical text
    length: int
    number: int  # source line
    physical: str
    column: int  # 0-based offset in the physical line


@dataclass(frozen=True, slots=True, kw_only=True)
class Line:
    """A logical line being checked; ``problems`` collects its errors."""

    file: str
    text: str
    pieces: tuple[Piece, ...]
    problems: list[AcbuildError] = field(default_factory=list)

    def span(self, start: int, length: int = 1) -> Span:
        piece = next(p for p in reversed(self.pieces) if p.start <= start)
        inside = start - piece.start
        return Span(
            file=self.file,
            line=piece.number,
            column=piece.column + inside + 1,
            length=max(1, min(length, piece.length - inside)),
            source_line=piece.physical,
        )

    def fail(self, where: Word | int, message: str, hint: str | None = None) -> None:
        if isinstance(where, Word):
            span = self.span(where.start, len(where.raw))
        else:
            span = self.span(where)
        self.problems.append(AcfileError(message, span=span, hint=hint))

    def rest(self, word: Word) -> str:
        return self.text[word.start :]


def show(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…")


# C0, DEL and C1: never part of a name, path or label. Commands (RUN, EXEC, EVENT-HANDLER) may
# pass them to a program (printf's escapes); a NUL no program argument can hold.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NUL = re.compile(r"\x00")


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def control_character(text: str, *, command: bool = False) -> str | None:
    """The first character ``text`` may not hold, else None. A lone surrogate (a JSON
    array's ``\\ud800``) is never text, in a command or anywhere."""
    found = (_NUL if command else CONTROL).search(text) or _SURROGATE.search(text)
    return found[0] if found else None


def check_controls(line: Line, word: Word, value: str, *, command: bool = False) -> bool:
    """Report a control character in ``value`` (the word's meaning) against ``word``."""
    bad = control_character(value, command=command)
    if bad is None:
        return True
    if _SURROGATE.fullmatch(bad):
        line.fail(word, f"lone surrogate {bad!r} in {show(value)}",
                  hint="a word is Unicode text; a surrogate half alone is not")
        return False
    line.fail(word, f"control character {bad!r} in {show(value)}",
              hint="Acfile words hold printable text" if not command else
              "a program's arguments cannot hold a NUL byte")
    return False


class Located(TypedDict):
    span: Span
    text: str


def located(line: Line, keyword: Word) -> Located:
    return {"span": line.span(keyword.start, len(keyword.raw)), "text": line.text}


# --- options and positionals -----------------------------------------------------------------


def split_options(
    line: Line,
    words: Sequence[Word],
    allowed: Mapping[str, Kind],
    keyword: str,
    *,
    anywhere: bool = False,
) -> tuple[dict[str, list[Word]], list[Word]]:
    """Options (before the first positional, or anywhere) and positionals; ``--`` ends
    options."""
    options: dict[str, list[Word]] = {}
    positionals: list[Word] = []
    for i, word in enumerate(words):
        if (positionals and not anywhere) or word.raw == "--":
            positionals.extend(words[i + (word.raw == "--") :])
            break
        if not word.raw.startswith("--"):
            positionals.append(word)
            continue
        if option := _option(line, word, allowed, keyword):
            name, value = option
            if name in options and allowed[name] != "many":
                line.fail(word, f"option --{name} given more than once")
            options.setdefault(name, []).append(value)
    return options, positionals


def _option(
    line: Line, word: Word, allowed: Mapping[str, Kind], keyword: str
) -> tuple[str, Word] | None:
    name, has_value, value = word.value[2:].partition("=")
    head = Word(raw=word.raw.partition("=")[0], value="--" + name, start=word.start)
    kind = allowed.get(name)
    if kind is None:
        if not allowed:
            line.fail(head, f"unknown option {show(head.value)}: {keyword} takes no options")
            return None
        close = difflib.get_close_matches(name, allowed, n=1)
        mean = f" (did you mean '--{close[0]}'?)" if close else ""
        names = ", ".join(f"--{n}" for n in allowed)
        line.fail(head, f"unknown option {show(head.value)} for {keyword}{mean}; allowed: {names}")
        return None
    if kind == "flag":
        if has_value:
            line.fail(word, f"option --{name} takes no value")
        return name, word
    if not value:
        line.fail(word, f"option --{name} needs a value: --{name}=VALUE")
        return None
    skip = len(head.raw) + 1 if "=" in word.raw else 0
    return name, Word(raw=word.raw[skip:], value=value, start=word.start + skip)


def one(options: Mapping[str, list[Word]], name: str) -> Word | None:
    return options[name][0] if name in options else None


def exact_count(line: Line, keyword: Word, words: Sequence[Word], usage: str, names: int) -> bool:
    """Whether ``words`` are exactly ``names`` positionals; reports the difference."""
    wanted = usage.split()[1 : 1 + names]
    if len(words) < names:
        line.fail(
            len(line.text),
            f"missing {wanted[len(words)]} for {keyword.raw.upper()}",
            hint=f"usage: {usage}",
        )
        return False
    if len(words) > names:
        line.fail(
            words[names], f"unexpected argument {show(words[names].value)}", hint=f"usage: {usage}"
        )
        return False
    return True


def whole_number(line: Line, word: Word, what: str) -> int | None:
    if NUMBER.fullmatch(word.value):
        return int(word.value)
    line.fail(word, f"invalid {what} {show(word.value)}: expected a whole number")
    return None


def pair(line: Line, word: Word, what: str) -> tuple[str, str] | None:
    key, sep, value = word.value.partition("=")
    if not sep:
        line.fail(word, f"expected KEY=VALUE for {what}, got {show(word.value)}")
        return None
    if not key:
        line.fail(word, f"empty name in {show(word.value)}: expected KEY=VALUE")
        return None
    return key, value


def json_value(line: Line, word: Word, what: str) -> object:
    """The JSON text from ``word`` to the end of the line; None after reporting an error."""
    text = line.rest(word)
    whole = rest_word(line, word)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        line.fail(word.start + e.pos, f"malformed {what}: {e.msg}")
    except ValueError as e:
        line.fail(whole, f"malformed {what}: {e}")
    except RecursionError:
        line.fail(whole, f"malformed {what}: nested too deeply")
    return None


def rest_word(line: Line, word: Word) -> Word:
    """``word`` and everything after it, to point at a whole JSON value."""
    text = line.rest(word)
    return Word(raw=text, value=text, start=word.start)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed in JSON")


def strings(line: Line, words: Sequence[Word], what: str, *,
            command: bool = False) -> tuple[str, ...] | None:
    """Words as values, or a JSON array of strings when the first word opens one."""
    if not words or not words[0].raw.startswith("["):
        return tuple(w.value for w in words)
    value = json_value(line, words[0], "JSON array")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        line.fail(rest_word(line, words[0]), f"{what} must be a JSON array of strings")
        return None
    if not all(check_controls(line, rest_word(line, words[0]), v, command=command)
               for v in value):
        return None
    return tuple(value)


def command(line: Line, keyword: Word, words: Sequence[Word]) -> tuple[str, ...] | None:
    argv = strings(line, words, "a command", command=True)
    if argv is not None and not argv:
        line.fail(words[0] if words else len(line.text), f"empty command for {keyword.raw.upper()}")
        return None
    return argv


# --- values others parse too -----------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in ``30``, ``30s``, ``5m``, ``1h`` or ``1.5m``."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise AcfileError(
            f"invalid duration {show(text)}: expected a number with an optional unit s, m "
            "or h (30, 30s, 5m, 1.5h)"
        )
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise AcfileError(f"invalid duration {show(text)}: must be greater than 0")
    if seconds > MAX_DURATION:  # also keeps deadlines inside time_t
        raise AcfileError(f"invalid duration {show(text)}: at most {MAX_DURATION // 86400} days")
    return seconds


def split_image_reference(ref: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``name[:version][,label=value…]`` to the name and its labels, version first."""
    name_part, *label_parts = ref.split(",")
    name, has_version, version = name_part.partition(":")
    if not name:
        raise AcfileError(f"missing image name in {show(ref)}")
    labels: list[tuple[str, str]] = []
    if has_version:
        if not version:
            raise AcfileError(f"empty version in {show(ref)}")
        labels.append(("version", version))
    for part in label_parts:
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise AcfileError(f"invalid label {show(part)} in {show(ref)}: expected NAME=VALUE")
        if any(k == key for k, _ in labels):
            raise AcfileError(f"label {key!r} given more than once in {show(ref)}")
        labels.append((key, value))
    return name, tuple(labels)
