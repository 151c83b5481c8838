"""Parse stage: ``RUN --mount=type=cache|bind|secret,key=value,...`` into RunMount.

The keys and their meaning follow BuildKit's Dockerfile ``RUN --mount``; what needs no more
than the line (known type and keys, an absolute target, one mount per target) is checked
here, against the field it is about. The planner checks ``from=`` against the stages.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Sequence

from acbuild.acfile import instructions as ins
from acbuild.acfile.parse_words import Line, Word, check_controls, show

SECRETS_DIR = "/run/secrets"
# A secret's name becomes a file name in SECRETS_DIR: no '/', no '..', nothing hidden.
SECRET_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_OCTAL = re.compile(r"(?:0o)?([0-7]{1,4})")
_NUMBER = re.compile(r"\d{1,10}")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_TYPES = ("cache", "bind", "secret")
_SHARING = ("shared", "private", "locked")
# Key -> canonical key; BuildKit's spellings of each.
_ALIASES = {"type": "type", "target": "target", "dst": "target", "destination": "target",
            "source": "source", "src": "source", "from": "from", "id": "id",
            "sharing": "sharing", "required": "required", "mode": "mode", "uid": "uid",
            "gid": "gid", "readonly": "readonly", "ro": "readonly"}
_KEYS = {
    "cache": ("target", "id", "sharing", "mode", "uid", "gid"),
    "bind": ("target", "source", "from", "readonly"),
    "secret": ("id", "source", "required", "mode", "uid", "gid"),
}
# Where no RUN mount may go: the sandbox's own /proc and /dev, and the whole tree.
_RESERVED = ("/proc", "/dev")
USAGE = ("--mount=type=cache,target=DIR[,id=ID][,sharing=shared|private|locked] | "
         "type=bind,target=DIR[,source=PATH][,from=STAGE] | "
         "type=secret,id=ID[,required=true][,mode=0400][,uid=N][,gid=N]")


def parse_mounts(line: Line, words: Sequence[Word]) -> tuple[ins.RunMount, ...] | None:
    """Every --mount of one RUN; None when one of them is wrong (each problem reported)."""
    mounts: list[tuple[ins.RunMount, Word]] = []
    ok = True
    for word in words:
        mount = _parse(line, word)
        ok = ok and mount is not None
        if mount is not None:
            mounts.append((mount, word))
    seen: dict[str, ins.RunMount] = {}
    for mount, word in mounts:
        if mount.target in seen:
            line.fail(word, f"two --mount options for target {show(mount.target)}",
                      hint="each target takes one mount")
            ok = False
        seen.setdefault(mount.target, mount)
    ids: set[str] = set()
    for mount, word in mounts:
        if mount.kind == "cache" and mount.cache_id in ids:
            # One step holding one cache's lock twice would wait for itself (locked).
            line.fail(word, f"two cache mounts of id {show(mount.cache_id)} in one RUN",
                      hint="mount it once, or give the second its own id=")
            ok = False
        if mount.kind == "cache":
            ids.add(mount.cache_id)
    for mount, word in mounts:
        outer = next((t for t in seen if t != mount.target and _below(mount.target, t)), None)
        if outer is not None:
            line.fail(word, f"--mount target {show(mount.target)} lies inside the target "
                      f"of another --mount ({show(outer)})",
                      hint="mount them at separate places")
            ok = False
    return tuple(m for m, _ in mounts) if ok else None


def _below(path: str, parent: str) -> bool:
    return parent == "/" or path.startswith(parent.rstrip("/") + "/")


class _Fields:
    """The key=value fields of one --mount word, each with the column it starts at."""

    def __init__(self, line: Line, word: Word) -> None:
        self.line, self.word = line, word
        self.values: dict[str, tuple[str, Word]] = {}
        self.ok = True
        exact = word.raw == word.value  # unquoted: each field's own column is known
        offset = 0
        for text in word.value.split(","):
            where = Word(raw=text, value=text, start=word.start + offset) if exact else word
            offset += len(text) + 1
            self._add(text, where)

    def _add(self, text: str, where: Word) -> None:
        key, sep, value = text.partition("=")
        name = _ALIASES.get(key.strip().lower())
        if not text.strip():
            return self.fail(where, "empty field in --mount (two commas?)")
        if name is None:
            close = difflib.get_close_matches(key.lower(), _ALIASES, n=1)
            mean = f" (did you mean {close[0]!r}?)" if close else ""
            return self.fail(where, f"unknown --mount key {show(key)}{mean}")
        if name in self.values:
            return self.fail(where, f"--mount key {show(key)} given more than once")
        if (not sep and name not in ("required", "readonly")) or (sep and not value):
            return self.fail(where, f"--mount key {show(key)} needs a value: {key}=VALUE")
        if not check_controls(self.line, where, value):
            self.ok = False
            return None
        self.values[name] = (value if sep else "true", where)
        return None

    def fail(self, where: Word, message: str, hint: str | None = None) -> None:
        self.line.fail(where, message, hint=hint)
        self.ok = False

    def get(self, name: str) -> str | None:
        return self.values[name][0] if name in self.values else None

    def at(self, name: str) -> Word:
        return self.values[name][1] if name in self.values else self.word


def _parse(line: Line, word: Word) -> ins.RunMount | None:
    fields = _Fields(line, word)
    kind = (fields.get("type") or "bind").lower()  # BuildKit's default type is bind
    if kind not in _TYPES:
        fields.fail(fields.at("type"), f"unknown --mount type {show(kind)}: expected cache, "
                    "bind or secret")
        return None
    for name, (_, where) in fields.values.items():
        if name != "type" and name not in _KEYS[kind]:
            hint = ("a secret is always at /run/secrets/ID" if name == "target" else
                    f"type={kind} takes {', '.join(_KEYS[kind])}")
            fields.fail(where, f"--mount key {show(name)} does not apply to type={kind}",
                        hint=hint)
    secret_id = _secret_id(fields) if kind == "secret" else None
    target = _target(fields, kind, secret_id)
    sharing = (fields.get("sharing") or "shared").lower()
    if sharing not in _SHARING:
        fields.fail(fields.at("sharing"), f"invalid sharing {show(sharing)}: expected shared, "
                    "private or locked")
    required = _flag(fields, "required")
    readonly = _flag(fields, "readonly")
    if readonly is False:
        fields.fail(fields.at("readonly"), "a bind mount is always read-only",
                    hint="write to a cache mount, or COPY the files and change them")
    mode = _mode(fields)
    uid, gid = _number(fields, "uid"), _number(fields, "gid")
    source = _source(fields, kind)
    if not fields.ok or target is None:
        return None
    return ins.RunMount(
        kind=kind,  # type: ignore[arg-type]  # checked against _TYPES
        target=target,
        id=secret_id if kind == "secret" else fields.get("id"),
        source=source,
        from_stage=fields.get("from"),
        sharing=sharing,  # type: ignore[arg-type]  # checked against _SHARING
        required=bool(required),
        mode=mode,
        uid=uid,
        gid=gid,
    )


def _source(fields: _Fields, kind: str) -> str | None:
    value = fields.get("source")
    if value is None:
        return None
    where = fields.at("source")
    if not value or ".." in value.split("/"):
        fields.fail(where, f"--mount source {show(value)} must be a path without '..'")
    elif kind == "secret" and value.startswith("/"):
        fields.fail(where, f"secret source {show(value)} must be a path in the build context",
                    hint="or leave it out and build with --secret id=ID,src=FILE")
    return value


def _secret_id(fields: _Fields) -> str | None:
    value = fields.get("id")
    if value is None:
        fields.fail(fields.word, "a secret --mount needs id=ID", hint=f"usage: {USAGE}")
        return None
    if not SECRET_ID.fullmatch(value):
        fields.fail(fields.at("id"), f"invalid secret id {show(value)}: letters, digits, "
                    "'_', '.' and '-', not starting with '.' or '-' (it names a file in "
                    f"{SECRETS_DIR})")
        return None
    return value


def _target(fields: _Fields, kind: str, secret_id: str | None) -> str | None:
    if kind == "secret":
        return f"{SECRETS_DIR}/{secret_id}" if secret_id else None
    value = fields.get("target")
    if value is None:
        fields.fail(fields.word, f"--mount type={kind} needs target=DIR", hint=f"usage: {USAGE}")
        return None
    where = fields.at("target")
    if not value.startswith("/"):
        fields.fail(where, f"--mount target {show(value)} must be an absolute path")
        return None
    if ".." in value.split("/"):
        fields.fail(where, f"--mount target {show(value)} must not contain '..'")
        return None
    target = posixpath.normpath(value)
    target = "/" + target.lstrip("/")  # normpath keeps a leading '//'
    if target == "/":
        fields.fail(where, "--mount target '/' would hide the whole image")
        return None
    for reserved in (*_RESERVED, SECRETS_DIR):
        if target == reserved or target.startswith(reserved + "/"):
            why = ("is where secrets are mounted" if reserved == SECRETS_DIR else
                   "belongs to the sandbox")
            fields.fail(where, f"--mount target {show(value)}: {reserved} {why}")
            return None
    return target


def _flag(fields: _Fields, name: str) -> bool | None:
    value = fields.get(name)
    if value is None:
        return None
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    fields.fail(fields.at(name), f"invalid {name} {show(value)}: expected true or false")
    return None


def _mode(fields: _Fields) -> int | None:
    value = fields.get("mode")
    if value is None:
        return None
    octal = _OCTAL.fullmatch(value)
    if octal is None:
        fields.fail(fields.at("mode"), f"invalid mode {show(value)}: expected octal "
                    "permission bits like 0755")
        return None
    return int(octal[1], 8)


def _number(fields: _Fields, name: str) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if not _NUMBER.fullmatch(value) or int(value) >= 2**32 - 1:
        fields.fail(fields.at(name), f"invalid {name} {show(value)}: expected a number "
                    "below 4294967295")
        return None
    return int(value)
