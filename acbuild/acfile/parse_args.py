"""Parse stage: each instruction's words checked and built into its dataclass.

One builder per keyword (``BUILDERS``); each reports its problems on the line, pointing at
the word they are about, and returns None when the instruction cannot be built.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from acbuild.acfile import instructions as ins
from acbuild.acfile.parse_words import (
    NUMBER,
    Kind,
    Line,
    Word,
    command,
    exact_count,
    json_value,
    located,
    one,
    pair,
    parse_duration,
    rest_word,
    show,
    split_image_reference,
    split_options,
    strings,
    whole_number,
)
from acbuild.acfile.runmount import parse_mounts
from acbuild.acfile.signkey import key_spec_problem
from acbuild.errors import AcfileError
from acbuild.image.manifest import canonical_json
from acbuild.image.manifest_rules import EVENTS

_OCTAL = re.compile(r"(?:0o)?([0-7]{1,4})")
CHOWN = re.compile(r"[^:\s]+(?::[^:\s]+)?")  # USER[:GROUP]; the planner checks with it too

# --- instructions ----------------------------------------------------------------------------

_COPY_OPTIONS: dict[str, Kind] = {"from": "value", "chown": "value", "mode": "value"}
_RUN_OPTIONS: dict[str, Kind] = {
    "network": "value",
    "env": "many",
    "workdir": "value",
    "user": "value",
    "timeout": "value",
    "pids": "value",
    "memory": "value",
    "mount": "many",
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_NO_LIMIT = ("max", "unlimited")
_PORT_OPTIONS: dict[str, Kind] = {"count": "value", "socket-activated": "flag"}
_MOUNT_OPTIONS: dict[str, Kind] = {"read-only": "flag"}
_DEPENDENCY_OPTIONS: dict[str, Kind] = {"image-id": "value", "label": "many", "size": "value"}
_COPY_USAGE = "usage: COPY [--from=STAGE] [--chown=USER[:GROUP]] [--mode=0755] SRC... DEST"


def _begin(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = split_options(line, args, {}, "BEGIN")
    if not words:
        line.fail(
            len(line.text),
            "missing base for BEGIN",
            hint="usage: BEGIN scratch | BEGIN <path or image> [AS <stage>]",
        )
        return None
    # What the base names (scratch, archive, path, image name) is the planner's to check.
    base, rest = words[0], words[1:]
    stage = None
    if rest and rest[0].value.upper() != "AS":
        line.fail(rest[0], f"unexpected argument {show(rest[0].value)}: expected AS <stage>")
    elif len(rest) == 1:
        line.fail(rest[0], "missing stage name after AS")
    elif len(rest) > 2:
        line.fail(rest[2], f"unexpected argument {show(rest[2].value)} after the stage name")
    elif rest:
        stage = rest[1].value
    return ins.Begin(base=base.value, stage=stage, **located(line, kw))


def _single(cls: Callable[..., ins.Instruction], attr: str, usage: str) -> _Builder:
    def build(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
        _, words = split_options(line, args, {}, kw.raw.upper())
        if not exact_count(line, kw, words, usage, 1):
            return None
        return cls(**{attr: words[0].value}, **located(line, kw))

    return build


def _pairs_of(cls: Callable[..., ins.Instruction]) -> _Builder:
    def build(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
        _, words = split_options(line, args, {}, kw.raw.upper())
        if not words:
            line.fail(len(line.text), f"missing KEY=VALUE for {kw.raw.upper()}")
        pairs = [pair(line, w, kw.raw.upper()) for w in words]
        return cls(pairs=tuple(p for p in pairs if p), **located(line, kw))

    return build


def _copy(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    options, words = split_options(line, args, _COPY_OPTIONS, "COPY")
    paths = strings(line, words, "COPY arguments")
    if paths is None:
        return None
    if len(paths) < 2:
        line.fail(len(line.text), "COPY needs a source and a destination", hint=_COPY_USAGE)
        return None
    sources, dest = paths[:-1], paths[-1]
    if len(sources) > 1 and not dest.endswith("/"):
        where = words[-1] if len(words) == len(paths) else words[0]
        line.fail(
            where,
            f"COPY with several sources needs a directory destination ending "
            f"in '/': {show(dest + '/')}",
        )
    chown = one(options, "chown")
    if chown and not CHOWN.fullmatch(chown.value):
        line.fail(chown, f"invalid --chown {show(chown.value)}: expected USER[:GROUP]")
    mode = one(options, "mode")
    octal = _OCTAL.fullmatch(mode.value) if mode else None
    if mode and not octal:
        line.fail(
            mode, f"invalid --mode {show(mode.value)}: expected octal permission bits like 0755"
        )
    from_stage = one(options, "from")
    return ins.Copy(
        sources=sources,
        dest=dest,
        from_stage=from_stage.value if from_stage else None,
        chown=chown.value if chown else None,
        mode=int(octal[1], 8) if octal else None,
        **located(line, kw),
    )


def _run(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    options, words = split_options(line, args, _RUN_OPTIONS, "RUN")
    argv = command(line, kw, words)
    network = one(options, "network")
    if network and network.value not in ("none", "host"):
        line.fail(network, f"invalid --network {show(network.value)}: expected none or host")
    env = [pair(line, w, "--env") for w in options.get("env", [])]
    timeout = one(options, "timeout")
    seconds = _duration(line, timeout) if timeout else None
    pids_word, memory_word = one(options, "pids"), one(options, "memory")
    pids = _pids(line, pids_word) if pids_word else None
    memory = _memory(line, memory_word) if memory_word else None
    mounts = parse_mounts(line, options.get("mount", []))
    if argv is None or mounts is None:
        return None
    workdir, user = one(options, "workdir"), one(options, "user")
    return ins.Run(
        argv=argv,
        network="host" if network and network.value == "host" else "none",
        env=tuple(p for p in env if p),
        workdir=workdir.value if workdir else None,
        user=user.value if user else None,
        timeout=seconds,
        pids=pids,
        memory=memory,
        mounts=mounts,
        **located(line, kw),
    )


def _pids(line: Line, word: Word) -> int | None:
    """--pids=N (processes and threads), or max/unlimited (0)."""
    if word.value.lower() in _NO_LIMIT:
        return 0
    # At most 2^22 (the kernel's PID_MAX_LIMIT); a longer number is not one at all.
    if word.value.isascii() and word.value.isdigit() and len(word.value) <= 8 \
            and 0 < int(word.value) <= 1 << 22:
        return int(word.value)
    line.fail(word, f"invalid --pids {show(word.value)}: expected a number of processes "
                    "from 1 to 4194304, or max")
    return None


def _memory(line: Line, word: Word) -> int | None:
    """--memory=SIZE (512M, 2G, 1.5GiB, bytes), or max/unlimited (0)."""
    if word.value.lower() in _NO_LIMIT:
        return 0
    found = _SIZE.fullmatch(word.value) if word.value.isascii() and len(word.value) <= 32 \
        else None
    size = float(found[1]) * _SIZE_UNITS[found[2].lower()] if found is not None else 0.0
    if found is None or not 0 < size < 1 << 62:
        line.fail(word, f"invalid --memory {show(word.value)}: expected a size such as 512M "
                        "or 4G (below 4 EiB), or max")
        return None
    return int(size)


def _duration(line: Line, word: Word) -> float | None:
    try:
        return parse_duration(word.value)
    except AcfileError as e:
        line.fail(word, f"invalid --timeout: {e.message}")
        return None


def _exec(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = split_options(line, args, {}, "EXEC")
    argv = command(line, kw, words)
    return ins.Exec(argv=argv, **located(line, kw)) if argv else None


def _event_handler(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = split_options(line, args, {}, "EVENT-HANDLER")
    if not words:
        line.fail(
            len(line.text),
            "missing EVENT for EVENT-HANDLER",
            hint="usage: EVENT-HANDLER pre-start|post-stop COMMAND...",
        )
        return None
    event = words[0]
    if event.value not in EVENTS:
        line.fail(event, f"unknown event {show(event.value)}: expected pre-start or post-stop")
    argv = command(line, kw, words[1:])
    return ins.EventHandler(event=event.value, argv=argv, **located(line, kw)) if argv else None


def _gids(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = split_options(line, args, {}, "SUPPLEMENTARY-GIDS")
    if not words:
        line.fail(len(line.text), "missing GID for SUPPLEMENTARY-GIDS")
        return None
    if words[0].raw.startswith("["):
        value = json_value(line, words[0], "JSON array")
        if not isinstance(value, list) or not all(_is_gid(v) for v in value):
            if value is not None:
                message = "SUPPLEMENTARY-GIDS must be a JSON array of whole numbers"
                line.fail(rest_word(line, words[0]), message)
            return None
        return ins.SupplementaryGids(gids=tuple(int(v) for v in value), **located(line, kw))
    gids = [whole_number(line, w, "group ID") for w in words]
    return ins.SupplementaryGids(gids=tuple(g for g in gids if g is not None), **located(line, kw))


def _is_gid(value: object) -> bool:
    if isinstance(value, str):
        return bool(NUMBER.fullmatch(value))
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _port(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    options, words = split_options(line, args, _PORT_OPTIONS, "PORT", anywhere=True)
    usage = "PORT NAME PROTOCOL PORT [--count=N] [--socket-activated]"
    if not exact_count(line, kw, words, usage, 3):
        return None
    port = whole_number(line, words[2], "port")
    count_word = one(options, "count")
    count = whole_number(line, count_word, "--count") if count_word else 1
    if port is None or count is None:
        return None
    return ins.Port(
        name=words[0].value,
        protocol=words[1].value,
        port=port,
        count=count,
        socket_activated="socket-activated" in options,
        **located(line, kw),
    )


def _mount(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    options, words = split_options(line, args, _MOUNT_OPTIONS, "MOUNT", anywhere=True)
    if not exact_count(line, kw, words, "MOUNT NAME PATH [--read-only]", 2):
        return None
    return ins.Mount(
        name=words[0].value,
        path=words[1].value,
        read_only="read-only" in options,
        **located(line, kw),
    )


def _isolator(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = split_options(line, args, {}, "ISOLATOR")
    if len(words) < 2:
        missing = "NAME" if not words else "VALUE"
        line.fail(
            len(line.text),
            f"missing {missing} for ISOLATOR",
            hint="usage: ISOLATOR NAME JSON-VALUE",
        )
        return None
    value = json_value(line, words[1], "ISOLATOR value")
    if value is None and line.problems:
        return None
    return ins.Isolator(name=words[0].value, value_json=canonical_json(value), **located(line, kw))


def _dependency(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    options, words = split_options(line, args, _DEPENDENCY_OPTIONS, "DEPENDENCY", anywhere=True)
    usage = "DEPENDENCY NAME[:VERSION][,LABEL=VALUE...] [--image-id=ID] [--label=K=V] [--size=N]"
    if not exact_count(line, kw, words, usage, 1):
        return None
    split = _reference(line, words[0])
    labels = [pair(line, w, "--label") for w in options.get("label", [])]
    size_word, image_id = one(options, "size"), one(options, "image-id")
    size = whole_number(line, size_word, "--size") if size_word else None
    if split is None:
        return None
    return ins.Dependency(
        reference=words[0].value,
        image_name=split[0],
        labels=split[1] + tuple(p for p in labels if p),
        image_id=image_id.value if image_id else None,
        size=size,
        **located(line, kw),
    )


def _reference(line: Line, word: Word) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    try:
        return split_image_reference(word.value)
    except AcfileError as e:
        line.fail(word, e.message)
        return None


def _whitelist(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = split_options(line, args, {}, "PATH-WHITELIST")
    paths = strings(line, words, "PATH-WHITELIST")
    if paths is not None and not paths:
        line.fail(len(line.text), "missing PATH for PATH-WHITELIST")
        return None
    return ins.PathWhitelist(paths=paths, **located(line, kw)) if paths else None


def _sign(line: Line, kw: Word, args: Sequence[Word]) -> ins.Instruction | None:
    _, words = split_options(line, args, {}, "SIGN")
    if not exact_count(line, kw, words, "SIGN KEY", 1):
        return None
    if (problem := key_spec_problem(words[0].value)) is not None:
        line.fail(words[0], problem)
        return None
    return ins.Sign(key=words[0].value, **located(line, kw))


_Builder = Callable[[Line, Word, Sequence[Word]], ins.Instruction | None]

BUILDERS: dict[str, _Builder] = {
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
    "SIGN": _sign,
}
