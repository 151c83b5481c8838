"""Manifest edits (execute stage): pure functions applying one manifest instruction at a time.

The planner has already checked values; these functions only decide how an instruction
changes the manifest (upsert, replace, append), following acbuild's rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from acbuild.acfile import instructions as ins
from acbuild.image.hostarch import host_os_arch
from acbuild.image.manifest import (
    App,
    Dependency,
    EventHandler,
    ImageManifest,
    Isolator,
    MountPoint,
    NameValue,
    Port,
)
from acbuild.image.manifest_rules import AC_VERSION

T = TypeVar("T")


def _upsert(
    items: tuple[NameValue, ...], pairs: Sequence[tuple[str, str]]
) -> tuple[NameValue, ...]:
    """Replace the value of a name in place, or append it: order stays as first written."""
    out = list(items)
    for name, value in pairs:
        item = NameValue(name=name, value=value)
        out = _replace_or_append(out, item, _named(name))
    return tuple(out)


def _named(name: str) -> Callable[[NameValue], bool]:
    """Whether a name/value item has ``name``."""
    return lambda item: item.name == name


def _replace_or_append(items: list[T], new: T, same: Callable[[T], bool]) -> list[T]:
    """Put ``new`` where the first matching item was, dropping any other match."""
    index = next((i for i, old in enumerate(items) if same(old)), None)
    kept = [old for old in items if not same(old)]
    if index is None:
        return [*kept, new]
    return [*kept[:index], new, *kept[index:]]


def _app(m: ImageManifest) -> App:
    # acbuild creates the app section on the first app-level edit, running as root.
    return m.app if m.app is not None else App()


def _edit_app(m: ImageManifest, **changes: object) -> ImageManifest:
    return replace(m, app=replace(_app(m), **changes))  # type: ignore[arg-type]  # field names checked by tests


def apply(m: ImageManifest, instruction: ins.Instruction) -> ImageManifest:
    """The manifest after one manifest instruction. Build instructions raise TypeError."""
    match instruction:
        case ins.Name(name=name):
            return replace(m, name=name)
        case ins.Label(pairs=pairs):
            return replace(m, labels=_upsert(m.labels, pairs))
        case ins.Annotation(pairs=pairs):
            return replace(m, annotations=_upsert(m.annotations, pairs))
        case ins.Env(pairs=pairs):
            return _edit_app(m, environment=_upsert(_app(m).environment, pairs))
        case ins.Exec(argv=argv):
            return _edit_app(m, exec=tuple(argv))
        case ins.User(user=user):
            return _edit_app(m, user=user)
        case ins.Group(group=group):
            return _edit_app(m, group=group)
        case ins.SupplementaryGids(gids=gids):
            return _edit_app(m, supplementary_gids=tuple(gids))
        case ins.Workdir(path=path):
            return _edit_app(m, working_directory=path)
        case ins.Port() | ins.Mount() | ins.Isolator() | ins.EventHandler():
            return _apply_app_list(m, instruction)
        case ins.Dependency():
            return replace(m, dependencies=_add_dependency(m.dependencies, instruction))
        case ins.PathWhitelist(paths=paths):
            whitelist = list(m.path_whitelist)
            for path in paths:
                if path not in whitelist:
                    whitelist.append(path)
            return replace(m, path_whitelist=tuple(whitelist))
        case _:
            raise TypeError(f"{type(instruction).__name__} does not edit the manifest")


def _apply_app_list(
    m: ImageManifest, instruction: ins.Port | ins.Mount | ins.Isolator | ins.EventHandler
) -> ImageManifest:
    app = _app(m)
    match instruction:
        case ins.Port():
            port = Port(
                name=instruction.name,
                protocol=instruction.protocol,
                port=instruction.port,
                count=instruction.count,
                socket_activated=instruction.socket_activated,
            )
            ports = _replace_or_append(list(app.ports), port, lambda p: p.name == port.name)
            return _edit_app(m, ports=tuple(ports))
        case ins.Mount():
            mount = MountPoint(
                name=instruction.name, path=instruction.path, read_only=instruction.read_only
            )
            mounts = _replace_or_append(
                list(app.mount_points),
                mount,
                lambda mp: mp.name == mount.name or mp.path == mount.path,
            )
            return _edit_app(m, mount_points=tuple(mounts))
        case ins.Isolator():
            iso = Isolator(name=instruction.name, value_json=instruction.value_json)
            isolators = _replace_or_append(list(app.isolators), iso, lambda i: i.name == iso.name)
            return _edit_app(m, isolators=tuple(isolators))
        case ins.EventHandler():
            handler = EventHandler(name=instruction.event, exec=tuple(instruction.argv))
            handlers = _replace_or_append(
                list(app.event_handlers), handler, lambda e: e.name == handler.name
            )
            return _edit_app(m, event_handlers=tuple(handlers))


def _add_dependency(
    deps: tuple[Dependency, ...], instruction: ins.Dependency
) -> tuple[Dependency, ...]:
    # acbuild: re-adding a dependency replaces it and moves it to the end, because later
    # dependencies are rendered over earlier ones and the user's latest line should win.
    labels: list[NameValue] = []
    for name, value in instruction.labels:
        labels = _replace_or_append(labels, NameValue(name=name, value=value), _named(name))
    dep = Dependency(
        image_name=instruction.image_name,
        image_id=instruction.image_id,
        labels=tuple(labels),
        size=instruction.size,
    )
    return (*(d for d in deps if d.image_name != dep.image_name), dep)


def inherit(base: ImageManifest) -> ImageManifest:
    """A base image's manifest as the start of a new one.

    The pathWhitelist is cleared (it described the base's own file set, not ours), and the
    acVersion becomes ours, since the manifest is written again by this version's rules.
    """
    return replace(base, path_whitelist=(), ac_version=AC_VERSION)


def finish(m: ImageManifest) -> ImageManifest:
    """Add ``os`` and ``arch`` labels from the host where the Acfile and base gave none.

    ``os`` and ``arch`` are filled independently, with one exception: when ``os`` names
    another system than the host's, the host's arch is not added (``darwin`` with the host's
    ``amd64`` would be an invalid pair); the image then simply has no arch label.
    Nothing else is reordered.
    """
    host_os, host_arch = host_os_arch()
    names = {lb.name: lb.value for lb in m.labels}
    add: list[tuple[str, str]] = []
    if "os" not in names:
        add.append(("os", host_os))
    if "arch" not in names and names.get("os", host_os) == host_os:
        add.append(("arch", host_arch))
    return replace(m, labels=_upsert(m.labels, add)) if add else m
