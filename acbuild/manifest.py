"""Manifest: the AppC ImageManifest model, its stable JSON form, and every AppC rule.

The rules live here once: ``problems()`` checks a whole manifest (validate, finalize) and
the ``*_problem`` helpers check one value each (the planner points them at Acfile tokens).
"""

from __future__ import annotations

import datetime
import json
import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from acbuild.errors import ImageError

AC_VERSION = "0.8.11"


@dataclass(frozen=True, slots=True, kw_only=True)
class NameValue:
    name: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Port:
    name: str
    protocol: str
    port: int
    count: int = 1
    socket_activated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MountPoint:
    name: str
    path: str
    read_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class EventHandler:
    name: str
    exec: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Isolator:
    name: str
    value_json: str  # canonical JSON text (sorted keys, compact) of the value


@dataclass(frozen=True, slots=True, kw_only=True)
class Dependency:
    image_name: str
    image_id: str | None = None
    labels: tuple[NameValue, ...] = ()
    size: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class App:
    exec: tuple[str, ...] = ()
    user: str = "0"
    group: str = "0"
    supplementary_gids: tuple[int, ...] = ()
    event_handlers: tuple[EventHandler, ...] = ()
    working_directory: str | None = None
    environment: tuple[NameValue, ...] = ()
    isolators: tuple[Isolator, ...] = ()
    mount_points: tuple[MountPoint, ...] = ()
    ports: tuple[Port, ...] = ()
    # Fields this model does not know (criLabels, userLabels, ...): (key, JSON text), kept as read.
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageManifest:
    name: str
    labels: tuple[NameValue, ...] = ()
    app: App | None = None
    dependencies: tuple[Dependency, ...] = ()
    path_whitelist: tuple[str, ...] = ()
    annotations: tuple[NameValue, ...] = ()
    ac_version: str = AC_VERSION
    extra: tuple[tuple[str, str], ...] = field(default=())


def default_manifest() -> ImageManifest:
    """The start of a scratch build: no name yet (NAME sets it), no os/arch (finish adds them)."""
    return ImageManifest(name="")


_MACHINES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "i386": "i386",
    "i486": "i386",
    "i586": "i386",
    "i686": "i386",
}


def host_os_arch() -> tuple[str, str]:
    """The host as AppC names its os and arch (``linux``/``amd64``, ``darwin``/``x86_64``...)."""
    os_name = platform.system().lower()
    machine = platform.machine().lower()
    arch = _MACHINES.get(machine, machine)
    if os_name == "darwin" and arch == "amd64":
        arch = "x86_64"  # AppC keeps the kernel's name for macOS
    if os_name == "freebsd" and machine.startswith("arm"):
        arch = "arm"
    return os_name, arch


# ---- JSON -----------------------------------------------------------------------------------


def _pairs(items: Iterable[NameValue]) -> list[dict[str, str]]:
    return [{"name": i.name, "value": i.value} for i in items]


def _extra(obj: dict[str, Any], extra: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    for key, text in sorted(extra):
        obj.setdefault(key, json.loads(text))
    return obj


def _app_obj(app: App) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if app.exec:
        obj["exec"] = list(app.exec)
    obj["user"] = app.user
    obj["group"] = app.group
    if app.supplementary_gids:
        obj["supplementaryGIDs"] = list(app.supplementary_gids)
    if app.event_handlers:
        obj["eventHandlers"] = [{"name": e.name, "exec": list(e.exec)} for e in app.event_handlers]
    if app.working_directory:
        obj["workingDirectory"] = app.working_directory
    if app.environment:
        obj["environment"] = _pairs(app.environment)
    if app.isolators:
        obj["isolators"] = [
            {"name": i.name, "value": json.loads(i.value_json)} for i in app.isolators
        ]
    if app.mount_points:
        obj["mountPoints"] = [_mount_obj(mp) for mp in app.mount_points]
    if app.ports:
        obj["ports"] = [_port_obj(p) for p in app.ports]
    return _extra(obj, app.extra)


def _mount_obj(mp: MountPoint) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": mp.name, "path": mp.path}
    if mp.read_only:
        obj["readOnly"] = True
    return obj


def _port_obj(p: Port) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": p.name, "protocol": p.protocol, "port": p.port, "count": p.count}
    if p.socket_activated:
        obj["socketActivated"] = True
    return obj


def _dependency_obj(d: Dependency) -> dict[str, Any]:
    obj: dict[str, Any] = {"imageName": d.image_name}
    if d.image_id:
        obj["imageID"] = d.image_id
    if d.labels:
        obj["labels"] = _pairs(d.labels)
    if d.size is not None:
        obj["size"] = d.size
    return obj


def _manifest_obj(m: ImageManifest) -> dict[str, Any]:
    obj: dict[str, Any] = {"acKind": "ImageManifest", "acVersion": m.ac_version, "name": m.name}
    if m.labels:
        obj["labels"] = _pairs(m.labels)
    if m.app is not None:
        obj["app"] = _app_obj(m.app)
    if m.dependencies:
        obj["dependencies"] = [_dependency_obj(d) for d in m.dependencies]
    if m.path_whitelist:
        obj["pathWhitelist"] = list(m.path_whitelist)
    if m.annotations:
        obj["annotations"] = _pairs(m.annotations)
    return _extra(obj, m.extra)


def to_json_bytes(m: ImageManifest) -> bytes:
    """The manifest as written into an ACI: fixed field order, compact, UTF-8."""
    text = json.dumps(_manifest_obj(m), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def to_json_pretty(m: ImageManifest) -> str:
    """The same document indented for people (``acbuild-py manifest``)."""
    return json.dumps(_manifest_obj(m), indent=2, ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """The canonical text of a JSON value: sorted keys, compact, non-ASCII kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def from_json_bytes(data: bytes) -> ImageManifest:
    """Parse an image manifest; wrong JSON or wrong field types raise ImageError naming the field.

    AppC rules beyond types are not enforced here (see ``problems()``), so a base image with a
    questionable manifest can still be read and fixed.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImageError(f"image manifest is not valid JSON: {e}") from None
    except RecursionError:
        raise ImageError("image manifest is nested too deeply") from None
    return _read_manifest(doc)


# ---- reading: JSON types checked field by field ---------------------------------------------


def _bad(where: str, expected: str) -> ImageError:
    return ImageError(f"image manifest field '{where}' must be {expected}")


def _obj(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(where, "an object")
    return v


def _list(v: Any, where: str) -> list[Any]:
    if v is None:
        return []  # Go writes nil slices as null
    if not isinstance(v, list):
        raise _bad(where, "a list")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise _bad(where, "a string")
    return v


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(where, "an integer")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise _bad(where, "true or false")
    return v


def _strings(v: Any, where: str) -> tuple[str, ...]:
    return tuple(_str(x, f"{where}[{i}]") for i, x in enumerate(_list(v, where)))


def _name_values(v: Any, where: str) -> tuple[NameValue, ...]:
    out = []
    for i, item in enumerate(_list(v, where)):
        o = _obj(item, f"{where}[{i}]")
        out.append(
            NameValue(
                name=_str(o.get("name"), f"{where}[{i}].name"),
                value=_str(o.get("value", ""), f"{where}[{i}].value"),
            )
        )
    return tuple(out)


def _rest(o: dict[str, Any], known: frozenset[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, canonical_json(v)) for k, v in o.items() if k not in known))


_MANIFEST_KEYS = frozenset(
    {"acKind", "acVersion", "name", "labels", "app", "dependencies", "pathWhitelist", "annotations"}
)
_APP_KEYS = frozenset(
    {
        "exec",
        "user",
        "group",
        "supplementaryGIDs",
        "eventHandlers",
        "workingDirectory",
        "environment",
        "isolators",
        "mountPoints",
        "ports",
    }
)


def _read_manifest(doc: Any) -> ImageManifest:
    o = _obj(doc, "(top level)")
    if o.get("acKind") != "ImageManifest":
        raise ImageError(f"image manifest has acKind {o.get('acKind')!r}, not 'ImageManifest'")
    app = o.get("app")
    return ImageManifest(
        ac_version=_str(o.get("acVersion", ""), "acVersion"),
        name=_str(o.get("name", ""), "name"),
        labels=_name_values(o.get("labels"), "labels"),
        app=None if app is None else _read_app(_obj(app, "app")),
        dependencies=tuple(
            _read_dependency(_obj(d, f"dependencies[{i}]"), f"dependencies[{i}]")
            for i, d in enumerate(_list(o.get("dependencies"), "dependencies"))
        ),
        path_whitelist=_strings(o.get("pathWhitelist"), "pathWhitelist"),
        annotations=_name_values(o.get("annotations"), "annotations"),
        extra=_rest(o, _MANIFEST_KEYS),
    )


def _read_app(o: dict[str, Any]) -> App:
    def each(key: str) -> list[tuple[str, dict[str, Any]]]:
        items = _list(o.get(key), f"app.{key}")
        return [(f"app.{key}[{i}]", _obj(x, f"app.{key}[{i}]")) for i, x in enumerate(items)]

    wd = o.get("workingDirectory")
    return App(
        exec=_strings(o.get("exec"), "app.exec"),
        user=_str(o.get("user", ""), "app.user"),
        group=_str(o.get("group", ""), "app.group"),
        supplementary_gids=tuple(
            _int(g, f"app.supplementaryGIDs[{i}]")
            for i, g in enumerate(_list(o.get("supplementaryGIDs"), "app.supplementaryGIDs"))
        ),
        event_handlers=tuple(
            EventHandler(
                name=_str(e.get("name"), f"{w}.name"), exec=_strings(e.get("exec"), f"{w}.exec")
            )
            for w, e in each("eventHandlers")
        ),
        working_directory=None if wd in (None, "") else _str(wd, "app.workingDirectory"),
        environment=_name_values(o.get("environment"), "app.environment"),
        isolators=tuple(
            Isolator(
                name=_str(i.get("name"), f"{w}.name"), value_json=canonical_json(i.get("value"))
            )
            for w, i in each("isolators")
        ),
        mount_points=tuple(
            MountPoint(
                name=_str(m.get("name"), f"{w}.name"),
                path=_str(m.get("path"), f"{w}.path"),
                read_only=_bool(m.get("readOnly", False), f"{w}.readOnly"),
            )
            for w, m in each("mountPoints")
        ),
        ports=tuple(_read_port(p, w) for w, p in each("ports")),
        extra=_rest(o, _APP_KEYS),
    )


def _read_port(p: dict[str, Any], w: str) -> Port:
    count = _int(p.get("count", 0), f"{w}.count")
    return Port(
        name=_str(p.get("name"), f"{w}.name"),
        protocol=_str(p.get("protocol", ""), f"{w}.protocol"),
        port=_int(p.get("port"), f"{w}.port"),
        count=count or 1,  # the spec's default; Go reads a missing count as 0 and makes it 1
        socket_activated=_bool(p.get("socketActivated", False), f"{w}.socketActivated"),
    )


def _read_dependency(d: dict[str, Any], w: str) -> Dependency:
    image_id = d.get("imageID")
    size = d.get("size")
    return Dependency(
        image_name=_str(d.get("imageName"), f"{w}.imageName"),
        image_id=None if image_id in (None, "") else _str(image_id, f"{w}.imageID"),
        labels=_name_values(d.get("labels"), f"{w}.labels"),
        size=None if size is None else _int(size, f"{w}.size"),
    )


# ---- rules: one value at a time (the planner points these at Acfile tokens) -------------------

OS_ARCH: dict[str, frozenset[str]] = {
    "linux": frozenset(
        {
            "amd64",
            "i386",
            "aarch64",
            "aarch64_be",
            "armv6l",
            "armv7l",
            "armv7b",
            "ppc64",
            "ppc64le",
            "s390x",
        }
    ),
    "freebsd": frozenset({"amd64", "i386", "arm"}),
    "darwin": frozenset({"x86_64", "i386"}),
}

_RESOURCES_DEFAULT_FALSE = frozenset({"resource/cpu", "resource/memory"})
_RESOURCES_DEFAULT_TRUE = frozenset(
    {"resource/block-bandwidth", "resource/block-iops", "resource/network-bandwidth"}
)
_CAPABILITY_SETS = frozenset(
    {"os/linux/capabilities-retain-set", "os/linux/capabilities-remove-set"}
)
_SECCOMP_SETS = frozenset({"os/linux/seccomp-retain-set", "os/linux/seccomp-remove-set"})
# The isolators actool 0.8.11 knows; it rejects any other name ("invalid isolator"), so an image
# using e.g. os/linux/apparmor-profile (added to the spec later) would not validate.
KNOWN_ISOLATORS: frozenset[str] = (
    _RESOURCES_DEFAULT_FALSE
    | _RESOURCES_DEFAULT_TRUE
    | _CAPABILITY_SETS
    | _SECCOMP_SETS
    | {
        "os/linux/no-new-privileges",
        "os/linux/oom-score-adj",
        "os/linux/cpu-shares",
        "os/linux/selinux-context",
        "os/unix/sysctl",
    }
)
EVENTS = ("pre-start", "post-stop")

_AC_IDENTIFIER = re.compile(r"[a-z0-9]+(?:[-._~/][a-z0-9]+)*")
_AC_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9.-]*")
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:Z|[+-](\d{2}):(\d{2}))"
)
# Kubernetes quantities as actool parses them: a decimal number with an SI or binary suffix
# or an exponent ("500m", "1Gi", "1.5", "1e3").
_QUANTITY = re.compile(
    r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?"
)
# Full image IDs have 128 hex digits; rkt prints (and accepts) 32-digit prefixes.
_IMAGE_ID = re.compile(r"sha512-[0-9a-f]{32,128}")

AC_IDENTIFIER_RULE = "lower-case letters and digits, separated by single '-', '.', '_', '~' or '/'"
AC_NAME_RULE = "lower-case letters and digits, separated by single '-'"


def is_ac_identifier(s: object) -> bool:
    return isinstance(s, str) and _AC_IDENTIFIER.fullmatch(s) is not None


def is_ac_name(s: object) -> bool:
    return isinstance(s, str) and _AC_NAME.fullmatch(s) is not None


def ac_identifier_problem(what: str, s: str) -> str | None:
    if not s:
        return f"{what} must not be empty"
    if is_ac_identifier(s):
        return None
    return f"{what} {s!r} is not an ACIdentifier ({AC_IDENTIFIER_RULE})"


def ac_name_problem(what: str, s: str) -> str | None:
    if not s:
        return f"{what} must not be empty"
    if is_ac_name(s):
        return None
    return f"{what} {s!r} is not an ACName ({AC_NAME_RULE})"


def absolute_path_problem(what: str, path: str) -> str | None:
    if not path:
        return f"{what} must not be empty"
    if not path.startswith("/"):
        return f"{what} {path!r} must be an absolute path"
    return None


def version_problem(version: str) -> str | None:
    if not version:
        return "acVersion must be set"
    if not _SEMVER.fullmatch(version):
        return f"acVersion {version!r} is not a SemVer version such as {AC_VERSION!r}"
    if version.split("+")[0].split("-")[0] == "0.0.0":
        return "acVersion must not be 0.0.0"
    return None


def label_name_problem(name: str) -> str | None:
    if name == "name":
        return "'name' cannot be a label: the image name is the manifest's name field"
    return ac_identifier_problem("label name", name)


def os_arch_problem(os_name: str | None, arch: str | None) -> str | None:
    """The os/arch label pair against the spec's whitelist; arch means nothing without os."""
    if os_name is None:
        return None if arch is None else "label 'arch' needs an 'os' label beside it"
    archs = OS_ARCH.get(os_name)
    if archs is None:
        return f"bad os {os_name!r} (must be one of: {', '.join(sorted(OS_ARCH))})"
    if arch is not None and arch not in archs:
        return f"bad arch {arch!r} for {os_name} (must be one of: {', '.join(sorted(archs))})"
    return None


def env_name_problem(name: str) -> str | None:
    if _ENV_NAME.fullmatch(name):
        return None
    return (
        f"environment variable name {name!r} is not valid "
        "(a letter or '_', then letters, digits, '_', '.' or '-')"
    )


def port_problem(port: int, count: int) -> str | None:
    if not 1 <= port <= 65535:
        return f"port {port} is out of range (1-65535)"
    if count < 1:
        return f"port count {count} must be at least 1"
    if port + count > 65536:
        return f"port range {port}-{port + count - 1} ends beyond 65535"
    return None


def event_problem(event: str) -> str | None:
    if event in EVENTS:
        return None
    return f"event handler {event!r} is not one of: {', '.join(EVENTS)}"


def image_id_problem(image_id: str) -> str | None:
    if _IMAGE_ID.fullmatch(image_id):
        return None
    return f"image ID {image_id!r} is not 'sha512-' followed by 32 to 128 lower-case hex digits"


def rfc3339_problem(what: str, value: str) -> str | None:
    m = _RFC3339.fullmatch(value)
    if m is not None:
        year, month, day, hour, minute, sec, oh, om = (int(g or 0) for g in m.groups())
        try:
            datetime.datetime(year, month, day, hour, minute, sec)
            datetime.timedelta(hours=oh, minutes=om)
        except ValueError:
            m = None
        else:
            if oh < 24 and om < 60:
                return None
    return f"{what} {value!r} is not an RFC 3339 date such as '2006-01-02T15:04:05Z'"


def url_problem(what: str, value: str) -> str | None:
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() in ("http", "https") and rest and not rest.startswith("/"):
        return None
    return f"{what} {value!r} is not an http or https URL"


def annotation_problem(name: str, value: str) -> str | None:
    """The name rule, and the value rule of the annotations the spec defines."""
    if problem := ac_identifier_problem("annotation name", name):
        return problem
    if name == "created":
        return rfc3339_problem("annotation 'created'", value)
    if name in ("homepage", "documentation"):
        return url_problem(f"annotation {name!r}", value)
    return None


def isolator_value_problem(name: str, value_json: str) -> str | None:
    """The value's shape for a known isolator, as far as actool 0.8.11 checks it."""
    if name not in KNOWN_ISOLATORS:
        return f"unknown isolator {name!r}"
    try:
        value = json.loads(value_json)
    except (json.JSONDecodeError, RecursionError):
        return f"isolator {name}: value is not valid JSON"
    problem = _isolator_value(name, value)
    return None if problem is None else f"isolator {name}: {problem}"


def _isolator_value(name: str, v: Any) -> str | None:
    if name in _RESOURCES_DEFAULT_FALSE | _RESOURCES_DEFAULT_TRUE:
        return _resource(name, v)
    if name in _CAPABILITY_SETS | _SECCOMP_SETS:
        return _syscall_or_capability_set(name, v)
    if name == "os/linux/no-new-privileges":
        return None if isinstance(v, bool) else "value must be true or false"
    if name in ("os/linux/oom-score-adj", "os/linux/cpu-shares"):
        low, high = (-1000, 1000) if name.endswith("adj") else (2, 262144)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            return f"value must be an integer from {low} to {high}"
        return None
    if name == "os/linux/selinux-context":
        return _selinux(v)
    # os/unix/sysctl
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        return 'value must be an object of strings, e.g. {"net.ipv4.ip_forward": "1"}'
    return None


def _resource(name: str, v: Any) -> str | None:
    if not isinstance(v, dict):
        return 'value must be an object such as {"limit": "1G"}'
    for key in ("request", "limit"):
        q = v.get(key)
        if q is not None and (not isinstance(q, str) or not _QUANTITY.fullmatch(q)):
            return f"{key} {q!r} is not a quantity such as '500m', '2' or '1Gi'"
    default = v.get("default", False)
    if not isinstance(default, bool):
        return "default must be true or false"
    if name in _RESOURCES_DEFAULT_TRUE:
        if not default:
            return 'needs "default": true'
        if v.get("request") is not None:
            return "takes no request, only a limit"
    elif default:
        return "default must be false"
    return None


def _syscall_or_capability_set(name: str, v: Any) -> str | None:
    if not isinstance(v, dict):
        return 'value must be an object such as {"set": ["CAP_NET_BIND_SERVICE"]}'
    entries = v.get("set")
    if not isinstance(entries, list) or not entries:
        return "set must be a non-empty list"
    if not all(isinstance(e, str) and e for e in entries):
        return "set must hold non-empty strings"
    errno = v.get("errno", "")
    if name in _SECCOMP_SETS and errno != "" and not re.fullmatch(r"E[A-Z]*", str(errno)):
        return f"errno {errno!r} must be an upper-case name starting with 'E', e.g. 'EPERM'"
    return None


def _selinux(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "value must be an object with user, role, type and level"
    for key in ("user", "role", "type", "level"):
        part = v.get(key)
        if not isinstance(part, str) or not part or (key != "level" and ":" in part):
            return f"{key} {part!r} is not valid"
    return None


# ---- rules: the whole manifest ----------------------------------------------------------------


def _duplicates(what: str, names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dups: list[str] = []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    return [f"duplicate {what} {n!r}" for n in dups]


def _keep(*found: str | None) -> list[str]:
    return [p for p in found if p is not None]


def _labels_problems(labels: tuple[NameValue, ...], where: str = "") -> list[str]:
    out = [p for lb in labels if (p := label_name_problem(lb.name))]
    out += _duplicates(f"{where}label", (lb.name for lb in labels))
    values = {lb.name: lb.value for lb in labels}
    out += _keep(os_arch_problem(values.get("os"), values.get("arch")))
    return out


def _app_problems(app: App) -> list[str]:
    out: list[str] = []
    if any(not arg for arg in app.exec):
        out.append("app exec arguments must not be empty strings")
    out += _keep(
        None if app.user else "app user must not be empty",
        None if app.group else "app group must not be empty",
    )
    out += [f"supplementary GID {g} is negative" for g in app.supplementary_gids if g < 0]
    for e in app.event_handlers:
        out += _keep(
            event_problem(e.name), None if e.exec else f"event handler {e.name!r} has no exec"
        )
    out += _duplicates("event handler", (e.name for e in app.event_handlers))
    if app.working_directory is not None:
        out += _keep(absolute_path_problem("working directory", app.working_directory))
    out += [p for e in app.environment if (p := env_name_problem(e.name))]
    out += _duplicates("environment variable", (e.name for e in app.environment))
    out += [p for i in app.isolators if (p := isolator_value_problem(i.name, i.value_json))]
    out += _duplicates("isolator", (i.name for i in app.isolators))
    if {i.name for i in app.isolators} >= _SECCOMP_SETS:
        out.append("isolators seccomp-retain-set and seccomp-remove-set exclude each other")
    for mp in app.mount_points:
        out += _keep(ac_name_problem("mount point name", mp.name))
        out += _keep(absolute_path_problem(f"mount point {mp.name!r} path", mp.path))
    out += _duplicates("mount point", (mp.name for mp in app.mount_points))
    for p in app.ports:
        out += _keep(ac_name_problem("port name", p.name), port_problem(p.port, p.count))
        out += _keep(None if p.protocol else f"port {p.name!r} has no protocol")
    out += _duplicates("port", (p.name for p in app.ports))
    return out


def problems(m: ImageManifest) -> list[str]:
    """Every AppC rule the manifest breaks, one sentence each; ``[]`` when it is valid."""
    out = _keep(version_problem(m.ac_version), ac_identifier_problem("name", m.name))
    out += _labels_problems(m.labels)
    if m.app is not None:
        out += _app_problems(m.app)
    for d in m.dependencies:
        out += _keep(ac_identifier_problem("dependency name", d.image_name))
        out += _keep(None if d.image_id is None else image_id_problem(d.image_id))
        out += [p for lb in d.labels if (p := label_name_problem(lb.name))]
        out += _duplicates(f"label of dependency {d.image_name!r}:", (lb.name for lb in d.labels))
        out += _keep(None if d.size is None or d.size >= 0 else "dependency size is negative")
    out += [p for w in m.path_whitelist if (p := absolute_path_problem("pathWhitelist entry", w))]
    out += [p for a in m.annotations if (p := annotation_problem(a.name, a.value))]
    out += _duplicates("annotation", (a.name for a in m.annotations))
    return out
