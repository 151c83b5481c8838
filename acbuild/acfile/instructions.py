"""Instructions: the typed form of each Acfile line, as the parser produces them.

Values are as the user wrote them after quoting and option parsing; the planner checks their
meaning (identifiers, ranges, paths). Every instruction knows where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from acbuild.errors import Span

KeyValue = tuple[str, str]
Argv = tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Located:
    """Where an instruction came from: the keyword's span and the logical line as written
    (continuations joined with a space, after template rendering)."""

    span: Span
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Begin(Located):
    base: str  # "scratch", "docker-archive:…", "oci:…", "oci-archive:…", a path, or a name
    stage: str | None = None  # BEGIN <base> AS <stage>


@dataclass(frozen=True, slots=True, kw_only=True)
class Name(Located):
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Label(Located):
    pairs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Annotation(Located):
    pairs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Env(Located):
    pairs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Copy(Located):
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None = None
    chown: str | None = None  # "uid[:gid]" (numbers or names), resolved at execute time
    mode: int | None = None  # exact permission bits from --mode=0755


@dataclass(frozen=True, slots=True, kw_only=True)
class RunMount:
    """One ``RUN --mount=``: a persistent cache directory, a read-only view of the context
    (or of a stage), or a secret file. Only what the Acfile says; the host paths a cache or
    a ``--secret`` lives at are the build's, never the instruction's."""

    kind: Literal["cache", "bind", "secret"]
    target: str  # absolute path in the sandbox; a secret's is /run/secrets/<id>
    id: str | None = None  # cache: which directory (default: target); secret: its name
    source: str | None = None  # bind: path in the context or stage; secret: context file
    from_stage: str | None = None  # bind only
    sharing: Literal["shared", "private", "locked"] = "shared"  # cache only
    required: bool = False  # secret only: a build without it fails
    mode: int | None = None  # cache: of the directory when made; secret: of the file
    uid: int | None = None
    gid: int | None = None

    @property
    def cache_id(self) -> str:
        return self.id if self.id is not None else self.target


@dataclass(frozen=True, slots=True, kw_only=True)
class Run(Located):
    argv: Argv
    network: Literal["none", "host"] = "none"
    env: tuple[KeyValue, ...] = ()
    workdir: str | None = None
    user: str | None = None
    timeout: float | None = None  # seconds, from --timeout=90s / 5m / 1h / 1.5
    pids: int | None = None  # --pids=N; None: the default, 0: no limit (--pids=max)
    memory: int | None = None  # bytes, --memory=2G; None: the default, 0: no limit
    mounts: tuple[RunMount, ...] = ()  # --mount=type=cache|bind|secret,...


@dataclass(frozen=True, slots=True, kw_only=True)
class Exec(Located):
    argv: Argv


@dataclass(frozen=True, slots=True, kw_only=True)
class User(Located):
    user: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Group(Located):
    group: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SupplementaryGids(Located):
    gids: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Workdir(Located):
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Port(Located):
    name: str
    protocol: str
    port: int
    count: int = 1
    socket_activated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Mount(Located):
    name: str
    path: str
    read_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Isolator(Located):
    name: str
    value_json: str  # canonical JSON text (sorted keys, no spaces) of the isolator value


@dataclass(frozen=True, slots=True, kw_only=True)
class EventHandler(Located):
    event: str  # "pre-start" or "post-stop"
    argv: Argv


@dataclass(frozen=True, slots=True, kw_only=True)
class Dependency(Located):
    reference: str  # as written: name[:version][,label=value…]
    image_name: str
    labels: tuple[KeyValue, ...] = ()  # from ":version", ",k=v" and --label, in that order
    image_id: str | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PathWhitelist(Located):
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sign(Located):
    key: str


Instruction = (
    Begin
    | Name
    | Label
    | Annotation
    | Env
    | Copy
    | Run
    | Exec
    | User
    | Group
    | SupplementaryGids
    | Workdir
    | Port
    | Mount
    | Isolator
    | EventHandler
    | Dependency
    | PathWhitelist
    | Sign
)

# Keyword as written in an Acfile for each instruction type (the canonical, upper-case form).
KEYWORDS: dict[type[Located], str] = {
    Begin: "BEGIN",
    Name: "NAME",
    Label: "LABEL",
    Annotation: "ANNOTATION",
    Env: "ENV",
    Copy: "COPY",
    Run: "RUN",
    Exec: "EXEC",
    User: "USER",
    Group: "GROUP",
    SupplementaryGids: "SUPPLEMENTARY-GIDS",
    Workdir: "WORKDIR",
    Port: "PORT",
    Mount: "MOUNT",
    Isolator: "ISOLATOR",
    EventHandler: "EVENT-HANDLER",
    Dependency: "DEPENDENCY",
    PathWhitelist: "PATH-WHITELIST",
    Sign: "SIGN",
}


def keyword(instruction: Located) -> str:
    return KEYWORDS[type(instruction)]
