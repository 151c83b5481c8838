"""Manifest: the AppC ImageManifest model and its stable JSON form (written and read).

The AppC rules live in ``acbuild.image.manifest_rules``; ``read_checked`` applies them to every
manifest read from an image. Keys the model does not know are kept at every level.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from acbuild.errors import ImageError
from acbuild.image import manifest_rules
from acbuild.image.manifest_rules import AC_VERSION
from acbuild.terminal import json_dumps


@dataclass(frozen=True, slots=True, kw_only=True)
class NameValue:
    name: str
    value: str
    # keys this model does not know: (key, canonical JSON text), kept as read
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Port:
    name: str
    protocol: str
    port: int
    count: int = 1
    socket_activated: bool = False
    # keys this model does not know: (key, canonical JSON text), kept as read
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MountPoint:
    name: str
    path: str
    read_only: bool = False
    # keys this model does not know: (key, canonical JSON text), kept as read
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EventHandler:
    name: str
    exec: tuple[str, ...]
    # keys this model does not know: (key, canonical JSON text), kept as read
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Isolator:
    name: str
    value_json: str  # canonical JSON text (sorted keys, compact) of the value
    # keys this model does not know: (key, canonical JSON text), kept as read
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Dependency:
    image_name: str
    image_id: str | None = None
    labels: tuple[NameValue, ...] = ()
    size: int | None = None
    # keys this model does not know: (key, canonical JSON text), kept as read
    extra: tuple[tuple[str, str], ...] = ()


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


# ---- JSON -----------------------------------------------------------------------------------


def _pairs(items: Iterable[NameValue]) -> list[dict[str, Any]]:
    return [_extra({"name": i.name, "value": i.value}, i.extra) for i in items]


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
        obj["eventHandlers"] = [
            _extra({"name": e.name, "exec": list(e.exec)}, e.extra) for e in app.event_handlers
        ]
    if app.working_directory:
        obj["workingDirectory"] = app.working_directory
    if app.environment:
        obj["environment"] = _pairs(app.environment)
    if app.isolators:
        obj["isolators"] = [
            _extra({"name": i.name, "value": json.loads(i.value_json)}, i.extra)
            for i in app.isolators
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
    return _extra(obj, mp.extra)


def _port_obj(p: Port) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": p.name, "protocol": p.protocol, "port": p.port, "count": p.count}
    if p.socket_activated:
        obj["socketActivated"] = True
    return _extra(obj, p.extra)


def _dependency_obj(d: Dependency) -> dict[str, Any]:
    obj: dict[str, Any] = {"imageName": d.image_name}
    if d.image_id is not None:
        obj["imageID"] = d.image_id
    if d.labels:
        obj["labels"] = _pairs(d.labels)
    if d.size is not None:
        obj["size"] = d.size
    return _extra(obj, d.extra)


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
    """The same document indented for people (``acbuild-py manifest``); characters that would
    drive a terminal are written as \\u escapes, which mean the same string."""
    return json_dumps(_manifest_obj(m), indent=2)


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
    except ValueError as e:  # e.g. an integer longer than Python converts (4300 digits)
        raise ImageError(f"image manifest cannot be read: {e}") from None
    except RecursionError:
        raise ImageError("image manifest is nested too deeply") from None
    if (where := lone_surrogate(doc)) is not None:
        raise ImageError(f"image manifest has a lone surrogate (\\ud800-\\udfff) in {where}: "
                         "not a Unicode string")
    return _read_manifest(doc)


def read_checked(data: bytes, where: str = "image manifest") -> ImageManifest:
    """The one strict reader of an image's manifest (manifest, inspect, verify, fetch, run,
    BEGIN): JSON types and every AppC rule; a broken rule is an ImageError naming them all."""
    m = from_json_bytes(data)
    if found := manifest_rules.problems(m):
        shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise ImageError(f"{where} is not valid: {shown}",
                         hint="`acbuild-py validate IMAGE` lists every problem")
    return m


def lone_surrogate(doc: Any) -> str | None:
    """Where a parsed JSON document holds a string with a lone surrogate (JSON allows the
    escape, Unicode text cannot hold it: writing it out again would fail), else None."""
    stack: list[tuple[str, Any]] = [("the document", doc)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _encodable(key):
                    return f"a key of {where}"
                stack.append((f"'{key}'", item))
        elif isinstance(value, list):
            stack.extend((where, item) for item in value)
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
                extra=_rest(o, _NAME_VALUE_KEYS),
            )
        )
    return tuple(out)


def _string_map(v: Any, where: str) -> None:
    """userAnnotations, userLabels: kept as read, but "All values in the object must be
    strings" (spec/aci.md)."""
    if v is None:
        return
    for key, value in _obj(v, where).items():
        _str(value, f"{where}.{key}")


def _rest(o: dict[str, Any], known: frozenset[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, canonical_json(v)) for k, v in o.items() if k not in known))


_NAME_VALUE_KEYS = frozenset({"name", "value"})
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
    _string_map(o.get("userAnnotations"), "app.userAnnotations")
    _string_map(o.get("userLabels"), "app.userLabels")
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
                name=_str(e.get("name", ""), f"{w}.name"),
                exec=_strings(e.get("exec"), f"{w}.exec"),
                extra=_rest(e, frozenset({"name", "exec"})),
            )
            for w, e in each("eventHandlers")
        ),
        working_directory=None if wd in (None, "") else _str(wd, "app.workingDirectory"),
        environment=_name_values(o.get("environment"), "app.environment"),
        isolators=tuple(
            Isolator(
                name=_str(i.get("name"), f"{w}.name"),
                value_json=canonical_json(i.get("value")),
                extra=_rest(i, frozenset({"name", "value"})),
            )
            for w, i in each("isolators")
        ),
        mount_points=tuple(
            MountPoint(
                name=_str(m.get("name"), f"{w}.name"),
                path=_str(m.get("path", ""), f"{w}.path"),
                read_only=_bool(m.get("readOnly", False), f"{w}.readOnly"),
                extra=_rest(m, frozenset({"name", "path", "readOnly"})),
            )
            for w, m in each("mountPoints")
        ),
        ports=tuple(_read_port(p, w) for w, p in each("ports")),
        extra=_rest(o, _APP_KEYS),
    )


_PORT_KEYS = frozenset({"name", "protocol", "port", "count", "socketActivated"})


def _read_port(p: dict[str, Any], w: str) -> Port:
    return Port(
        name=_str(p.get("name"), f"{w}.name"),
        protocol=_str(p.get("protocol", ""), f"{w}.protocol"),
        port=_int(p.get("port"), f"{w}.port"),
        # "defaults to 1 if unset"; an explicit 0 stays 0 for the rules to refuse ("Must be
        # >=1"), where the Go reference silently makes it 1
        count=_int(p.get("count", 1), f"{w}.count"),
        socket_activated=_bool(p.get("socketActivated", False), f"{w}.socketActivated"),
        extra=_rest(p, _PORT_KEYS),
    )


def _read_dependency(d: dict[str, Any], w: str) -> Dependency:
    image_id = d.get("imageID")
    size = d.get("size")
    return Dependency(
        image_name=_str(d.get("imageName"), f"{w}.imageName"),
        # "" is a bad imageID (the reference refuses it), not an absent one
        image_id=None if image_id is None else _str(image_id, f"{w}.imageID"),
        labels=_name_values(d.get("labels"), f"{w}.labels"),
        size=None if size is None else _int(size, f"{w}.size"),
        extra=_rest(d, frozenset({"imageName", "imageID", "labels", "size"})),
    )
