"""Parse stage: rendered Acfile lines to typed instructions (acbuild.instructions).

Lark splits each logical line into a keyword and shell-like words; each instruction then
checks its own words here, so every error points at the exact token the user wrote.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

from lark import Lark, Token, Transformer, UnexpectedInput
from lark.exceptions import UnexpectedCharacters, VisitError

from acbuild import instructions as ins
from acbuild.errors import AcbuildError, AcfileError, Span, raise_all
from acbuild.render import Rendered, render

_CONTINUATION = re.compile(r"\\[ \t]*$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)([smh]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"\d{1,19}")
_OCTAL = re.compile(r"(?:0o)?([0-7]{1,4})")
_CHOWN = re.compile(r"[^:\s]+(?::[^:\s]+)?")
_EVENTS = ("pre-start", "post-stop")
_SHOWN = 40  # characters of a user's word quoted in a message

Kind = Literal["flag", "value", "many"]


def grammar_text() -> str:
    """The Lark grammar, from the installed data package or the source checkout."""
    try:
        return importlib.resources.files("acbuild.grammar").joinpath("acfile.lark").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return (Path(__file__).resolve().parent.parent / "grammar" / "acfile.lark").read_text()


@functools.cache
def _lark() -> Lark:
    return Lark(grammar_text(), parser="lalr", propagate_positions=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Word:
    """One word of a line: as written (``raw``), unquoted (``value``), and where it starts."""

    raw: str
    value: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.raw)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class _Piece:
    """The share of one physical line in a logical line."""

    start: int  # offset in the logical text
    length: int
    number: int  # source line
    physical: str
    column: int  # 0-based offset in the physical line


@dataclass(frozen=True, slots=True, kw_only=True)
class _Line:
    """A logical line being checked; ``problems`` collects its errors."""

    file: str
    text: str
    pieces: tuple[_Piece, ...]
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


def parse_text(
    text: str, *, file: str = "Acfile", variables: Mapping[str, str] | None = None
) -> tuple[ins.Instruction, ...]:
    return parse(render(text, file=file, variables=variables or {}))


def parse(rendered: Rendered) -> tuple[ins.Instruction, ...]:
    """All instructions of a rendered Acfile, or every error in it at once."""
    result: list[ins.Instruction] = []
    errors: list[AcbuildError] = []
    for line in _logical_lines(rendered):
        instruction = _instruction(line)
        errors.extend(line.problems)
        if instruction is not None and not line.problems:
            result.append(instruction)
    raise_all(errors)
    return tuple(result)


def _logical_lines(rendered: Rendered) -> Iterator[_Line]:
    pieces: list[_Piece] = []
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
                _Piece(start=offset, length=len(content), number=line.number,
                       physical=line.text, column=column)
            )
            parts.append(content)
            offset += len(content)
        if not continued and parts:
            yield _Line(file=rendered.file, text=" ".join(parts), pieces=tuple(pieces))
            pieces, parts, offset = [], [], 0
    if parts:
        yield _Line(file=rendered.file, text=" ".join(parts), pieces=tuple(pieces))


def _instruction(line: _Line) -> ins.Instruction | None:
    try:
        words = _Words().transform(_lark().parse(line.text))
    except UnexpectedInput as e:
        line.fail(e.pos_in_stream or 0, _lexer_message(line.text, e))
        return None
    except VisitError as e:
        line.fail(0, f"cannot read line: {e.orig_exc}")
        return None
    keyword, args = words[0], words[1:]
    builder = _BUILDERS.get(keyword.raw.upper())
    if builder is None:
        close = difflib.get_close_matches(keyword.raw.upper(), _BUILDERS, n=1)
        mean = f" (did you mean {close[0]!r}?)" if close else ""
        line.fail(keyword, f"unknown instruction {_show(keyword.raw)}{mean}")
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


def _show(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…")


class _Located(TypedDict):
    span: Span
    text: str


def _located(line: _Line, keyword: Word) -> _Located:
    return {"span": line.span(keyword.start, len(keyword.raw)), "text": line.text}


# --- options and positionals -----------------------------------------------------------------


def _split(
    line: _Line, words: Sequence[Word], allowed: Mapping[str, Kind], keyword: str, *,
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
    line: _Line, word: Word, allowed: Mapping[str, Kind], keyword: str
) -> tuple[str, Word] | None:
    name, has_value, value = word.value[2:].partition("=")
    head = Word(raw=word.raw.partition("=")[0], value="--" + name, start=word.start)
    kind = allowed.get(name)
    if kind is None:
        if not allowed:
            line.fail(head, f"unknown option {_show(head.value)}: {keyword} takes no options")
            return None
        close = difflib.get_close_matches(name, allowed, n=1)
        mean = f" (did you mean '--{close[0]}'?)" if close else ""
        names = ", ".join(f"--{n}" for n in allowed)
        line.fail(head, f"unknown option {_show(head.value)} for {keyword}{mean}; allowed: {names}")
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


def _one(options: Mapping[str, list[Word]], name: str) -> Word | None:
    return options[name][0] if name in options else None


def _count(line: _Line, keyword: Word, words: Sequence[Word], usage: str, names: int) -> bool:
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
        line.fail(words[names], f"unexpected argument {_show(words[names].value)}",
                  hint=f"usage: {usage}")
        return False
    return True


def _number(line: _Line, word: Word, what: str) -> int | None:
    if _NUMBER.fullmatch(word.value):
        return int(word.value)
    line.fail(word, f"invalid {what} {_show(word.value)}: expected a whole number")
    return None


def _pair(line: _Line, word: Word, what: str) -> tuple[str, str] | None:
    key, sep, value = word.value.partition("=")
    if not sep:
        line.fail(word, f"expected KEY=VALUE for {what}, got {_show(word.value)}")
        return None
    if not key:
        line.fail(word, f"empty name in {_show(word.value)}: expected KEY=VALUE")
        return None
    return key, value


def _json(line: _Line, word: Word, what: str) -> object:
    """The JSON text from ``word`` to the end of the line; None after reporting an error."""
    text = line.rest(word)
    whole = _rest_word(line, word)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        line.fail(word.start + e.pos, f"malformed {what}: {e.msg}")
    except ValueError as e:
        line.fail(whole, f"malformed {what}: {e}")
    except RecursionError:
        line.fail(whole, f"malformed {what}: nested too deeply")
    return None


def _rest_word(line: _Line, word: Word) -> Word:
    """``word`` and everything after it, to point at a whole JSON value."""
    text = line.rest(word)
    return Word(raw=text, value=text, start=word.start)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed in JSON")


def _strings(line: _Line, words: Sequence[Word], what: str) -> tuple[str, ...] | None:
    """Words as values, or a JSON array of strings when the first word opens one."""
    if not words or not words[0].raw.startswith("["):
        return tuple(w.value for w in words)
    value = _json(line, words[0], "JSON array")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        line.fail(_rest_word(line, words[0]), f"{what} must be a JSON array of strings")
        return None
    return tuple(value)


def _command(line: _Line, keyword: Word, words: Sequence[Word]) -> tuple[str, ...] | None:
    argv = _strings(line, words, "a command")
    if argv is not None and not argv:
        line.fail(words[0] if words else len(line.text), f"empty command for {keyword.raw.upper()}")
        return None
    return argv


# --- instructions ----------------------------------------------------------------------------

_COPY_OPTIONS: dict[str, Kind] = {"from": "value", "chown": "value", "mode": "value"}
_RUN_OPTIONS: dict[str, Kind] = {
    "network": "value", "env": "many", "workdir": "value", "user": "value", "timeout": "value",
}
_PORT_OPTIONS: dict[str, Kind] = {"count": "value", "socket-activated": "flag"}
_MOUNT_OPTIONS: dict[str, Kind] = {"read-only": "flag"}
_DEPENDENCY_OPTIONS: dict[str, Kind] = {"image-id": "value", "label": "many", "size": "value"}
_COPY_USAGE = "usage: COPY [--from=STAGE] [--chown=USER[:GROUP]] [--mode=0755] SRC... DEST"


def _begin(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = _split(line, args, {}, "BEGIN")
    if not words:
        line.fail(len(line.text), "missing base for BEGIN",
                  hint="usage: BEGIN scratch | BEGIN <path or image> [AS <stage>]")
        return None
    # What the base names (scratch, archive, path, image name) is the planner's to check.
    base, rest = words[0], words[1:]
    stage = None
    if rest and rest[0].value.upper() != "AS":
        line.fail(rest[0], f"unexpected argument {_show(rest[0].value)}: expected AS <stage>")
    elif len(rest) == 1:
        line.fail(rest[0], "missing stage name after AS")
    elif len(rest) > 2:
        line.fail(rest[2], f"unexpected argument {_show(rest[2].value)} after the stage name")
    elif rest:
        stage = rest[1].value
    return ins.Begin(base=base.value, stage=stage, **_located(line, kw))


def _single(cls: Callable[..., ins.Instruction], attr: str, usage: str) -> _Builder:
    def build(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
        _, words = _split(line, args, {}, kw.raw.upper())
        if not _count(line, kw, words, usage, 1):
            return None
        return cls(**{attr: words[0].value}, **_located(line, kw))

    return build


def _pairs_of(cls: Callable[..., ins.Instruction]) -> _Builder:
    def build(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
        _, words = _split(line, args, {}, kw.raw.upper())
        if not words:
            line.fail(len(line.text), f"missing KEY=VALUE for {kw.raw.upper()}")
        pairs = [_pair(line, w, kw.raw.upper()) for w in words]
        return cls(pairs=tuple(p for p in pairs if p), **_located(line, kw))

    return build


def _copy(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    options, words = _split(line, args, _COPY_OPTIONS, "COPY")
    paths = _strings(line, words, "COPY arguments")
    if paths is None:
        return None
    if len(paths) < 2:
        line.fail(len(line.text), "COPY needs a source and a destination", hint=_COPY_USAGE)
        return None
    sources, dest = paths[:-1], paths[-1]
    if len(sources) > 1 and not dest.endswith("/"):
        where = words[-1] if len(words) == len(paths) else words[0]
        line.fail(where, f"COPY with several sources needs a directory destination ending "
                         f"in '/': {_show(dest + '/')}")
    chown = _one(options, "chown")
    if chown and not _CHOWN.fullmatch(chown.value):
        line.fail(chown, f"invalid --chown {_show(chown.value)}: expected USER[:GROUP]")
    mode = _one(options, "mode")
    octal = _OCTAL.fullmatch(mode.value) if mode else None
    if mode and not octal:
        line.fail(mode, f"invalid --mode {_show(mode.value)}: expected octal permission bits "
                        "like 0755")
    from_stage = _one(options, "from")
    return ins.Copy(
        sources=sources, dest=dest, from_stage=from_stage.value if from_stage else None,
        chown=chown.value if chown else None, mode=int(octal[1], 8) if octal else None,
        **_located(line, kw),
    )


def _run(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    options, words = _split(line, args, _RUN_OPTIONS, "RUN")
    argv = _command(line, kw, words)
    network = _one(options, "network")
    if network and network.value not in ("none", "host"):
        line.fail(network, f"invalid --network {_show(network.value)}: expected none or host")
    env = [_pair(line, w, "--env") for w in options.get("env", [])]
    timeout = _one(options, "timeout")
    seconds = _duration(line, timeout) if timeout else None
    if argv is None:
        return None
    workdir, user = _one(options, "workdir"), _one(options, "user")
    return ins.Run(
        argv=argv, network="host" if network and network.value == "host" else "none",
        env=tuple(p for p in env if p), workdir=workdir.value if workdir else None,
        user=user.value if user else None, timeout=seconds, **_located(line, kw),
    )


def _duration(line: _Line, word: Word) -> float | None:
    try:
        return parse_duration(word.value)
    except AcfileError as e:
        line.fail(word, f"invalid --timeout: {e.message}")
        return None


def _exec(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = _split(line, args, {}, "EXEC")
    argv = _command(line, kw, words)
    return ins.Exec(argv=argv, **_located(line, kw)) if argv else None


def _event_handler(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = _split(line, args, {}, "EVENT-HANDLER")
    if not words:
        line.fail(len(line.text), "missing EVENT for EVENT-HANDLER",
                  hint="usage: EVENT-HANDLER pre-start|post-stop COMMAND...")
        return None
    event = words[0]
    if event.value not in _EVENTS:
        line.fail(event, f"unknown event {_show(event.value)}: expected pre-start or post-stop")
    argv = _command(line, kw, words[1:])
    return ins.EventHandler(event=event.value, argv=argv, **_located(line, kw)) if argv else None


def _gids(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = _split(line, args, {}, "SUPPLEMENTARY-GIDS")
    if not words:
        line.fail(len(line.text), "missing GID for SUPPLEMENTARY-GIDS")
        return None
    if words[0].raw.startswith("["):
        value = _json(line, words[0], "JSON array")
        if not isinstance(value, list) or not all(_is_gid(v) for v in value):
            if value is not None:
                message = "SUPPLEMENTARY-GIDS must be a JSON array of whole numbers"
                line.fail(_rest_word(line, words[0]), message)
            return None
        return ins.SupplementaryGids(gids=tuple(int(v) for v in value), **_located(line, kw))
    gids = [_number(line, w, "group ID") for w in words]
    return ins.SupplementaryGids(gids=tuple(g for g in gids if g is not None),
                                 **_located(line, kw))


def _is_gid(value: object) -> bool:
    if isinstance(value, str):
        return bool(_NUMBER.fullmatch(value))
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _port(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    options, words = _split(line, args, _PORT_OPTIONS, "PORT", anywhere=True)
    usage = "PORT NAME PROTOCOL PORT [--count=N] [--socket-activated]"
    if not _count(line, kw, words, usage, 3):
        return None
    port = _number(line, words[2], "port")
    count_word = _one(options, "count")
    count = _number(line, count_word, "--count") if count_word else 1
    if port is None or count is None:
        return None
    return ins.Port(name=words[0].value, protocol=words[1].value, port=port, count=count,
                    socket_activated="socket-activated" in options, **_located(line, kw))


def _mount(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    options, words = _split(line, args, _MOUNT_OPTIONS, "MOUNT", anywhere=True)
    if not _count(line, kw, words, "MOUNT NAME PATH [--read-only]", 2):
        return None
    return ins.Mount(name=words[0].value, path=words[1].value,
                     read_only="read-only" in options, **_located(line, kw))


def _isolator(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = _split(line, args, {}, "ISOLATOR")
    if len(words) < 2:
        missing = "NAME" if not words else "VALUE"
        line.fail(len(line.text), f"missing {missing} for ISOLATOR",
                  hint="usage: ISOLATOR NAME JSON-VALUE")
        return None
    value = _json(line, words[1], "ISOLATOR value")
    if value is None and line.problems:
        return None
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return ins.Isolator(name=words[0].value, value_json=canonical, **_located(line, kw))


def _dependency(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    options, words = _split(line, args, _DEPENDENCY_OPTIONS, "DEPENDENCY", anywhere=True)
    usage = "DEPENDENCY NAME[:VERSION][,LABEL=VALUE...] [--image-id=ID] [--label=K=V] [--size=N]"
    if not _count(line, kw, words, usage, 1):
        return None
    split = _reference(line, words[0])
    labels = [_pair(line, w, "--label") for w in options.get("label", [])]
    size_word, image_id = _one(options, "size"), _one(options, "image-id")
    size = _number(line, size_word, "--size") if size_word else None
    if split is None:
        return None
    return ins.Dependency(
        reference=words[0].value, image_name=split[0],
        labels=split[1] + tuple(p for p in labels if p),
        image_id=image_id.value if image_id else None, size=size, **_located(line, kw),
    )


def _reference(line: _Line, word: Word) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    try:
        return split_image_reference(word.value)
    except AcfileError as e:
        line.fail(word, e.message)
        return None


def _whitelist(line: _Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = _split(line, args, {}, "PATH-WHITELIST")
    paths = _strings(line, words, "PATH-WHITELIST")
    if paths is not None and not paths:
        line.fail(len(line.text), "missing PATH for PATH-WHITELIST")
        return None
    return ins.PathWhitelist(paths=paths, **_located(line, kw)) if paths else None


_Builder = Callable[[_Line, Word, Sequence[Word]], ins.Instruction | None]

_BUILDERS: dict[str, _Builder] = {
    "BEGIN": _begin,
    "NAME": _single(ins.Name, "name", "NAME IMAGE-NAME"),
    "LABEL": _pairs_of(ins.Label),
    "ANNOTATION": _pairs_of(ins.Annotation),
    "ENV": _pairs_of(ins.Env),
    "COPY": _copy,
    "RUN": _run,
    "EXEC": _exec,
    "USER": _single(ins.User, "user", "USER USER"),
    "GROUP": _single(ins.Group, "group", "GROUP GROUP"),
    "SUPPLEMENTARY-GIDS": _gids,
    "WORKDIR": _single(ins.Workdir, "path", "WORKDIR PATH"),
    "PORT": _port,
    "MOUNT": _mount,
    "ISOLATOR": _isolator,
    "EVENT-HANDLER": _event_handler,
    "DEPENDENCY": _dependency,
    "PATH-WHITELIST": _whitelist,
    "SIGN": _single(ins.Sign, "key", "SIGN KEY"),
}


# --- values others parse too -----------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in ``30``, ``30s``, ``5m``, ``1h`` or ``1.5m``."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise AcfileError(
            f"invalid duration {_show(text)}: expected a number with an optional unit s, m "
            "or h (30, 30s, 5m, 1.5h)"
        )
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise AcfileError(f"invalid duration {_show(text)}: must be greater than 0")
    return seconds


def split_image_reference(ref: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``name[:version][,label=value…]`` to the name and its labels, version first."""
    name_part, *label_parts = ref.split(",")
    name, has_version, version = name_part.partition(":")
    if not name:
        raise AcfileError(f"missing image name in {_show(ref)}")
    labels: list[tuple[str, str]] = []
    if has_version:
        if not version:
            raise AcfileError(f"empty version in {_show(ref)}")
        labels.append(("version", version))
    for part in label_parts:
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise AcfileError(f"invalid label {_show(part)} in {_show(ref)}: expected NAME=VALUE")
        if any(k == key for k, _ in labels):
            raise AcfileError(f"label {key!r} given more than once in {_show(ref)}")
        labels.append((key, value))
    return name, tuple(labels)

