"""Tests for acbuild.build.manifest_edit: how each manifest instruction changes a manifest."""

from __future__ import annotations

from functools import reduce

import pytest

from acbuild.acfile import instructions as ins
from acbuild.build import manifest_edit
from acbuild.errors import Span
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
from acbuild.image.manifest_rules import problems

SPAN = Span(file="Acfile", line=1)
LOC = {"span": SPAN, "text": ""}


def apply_all(*items: ins.Instruction, start: ImageManifest | None = None) -> ImageManifest:
    return reduce(manifest_edit.apply, items, start or ImageManifest(name=""))


def nv(*pairs: tuple[str, str]) -> tuple[NameValue, ...]:
    return tuple(NameValue(name=k, value=v) for k, v in pairs)


def test_name_and_label_upsert_keeps_first_position() -> None:
    m = apply_all(
        ins.Name(name="example.com/app", **LOC),
        ins.Label(pairs=(("version", "1"), ("channel", "beta")), **LOC),
        ins.Label(pairs=(("version", "2"),), **LOC),
    )
    assert m.name == "example.com/app"
    assert m.labels == nv(("version", "2"), ("channel", "beta"))
    assert m.app is None  # labels do not create an app


def test_annotation_and_env_upsert() -> None:
    m = apply_all(
        ins.Annotation(pairs=(("a", "1"), ("b", "2")), **LOC),
        ins.Annotation(pairs=(("a", "3"),), **LOC),
        ins.Env(pairs=(("PATH", "/bin"), ("X", "1")), **LOC),
        ins.Env(pairs=(("X", "2"), ("PATH", "/usr/bin")), **LOC),
    )
    assert m.annotations == nv(("a", "3"), ("b", "2"))
    assert m.app is not None
    assert m.app.environment == nv(("PATH", "/usr/bin"), ("X", "2"))
    assert (m.app.user, m.app.group) == ("0", "0")


def test_app_fields() -> None:
    m = apply_all(
        ins.Exec(argv=("/bin/app", "-v"), **LOC),
        ins.User(user="app", **LOC),
        ins.Group(group="staff", **LOC),
        ins.SupplementaryGids(gids=(5, 6), **LOC),
        ins.Workdir(path="/srv", **LOC),
        ins.Exec(argv=("/bin/other",), **LOC),
    )
    assert m.app == App(
        exec=("/bin/other",),
        user="app",
        group="staff",
        supplementary_gids=(5, 6),
        working_directory="/srv",
    )


def test_port_replaces_same_name_in_place() -> None:
    m = apply_all(
        ins.Port(name="http", protocol="tcp", port=80, **LOC),
        ins.Port(name="dns", protocol="udp", port=53, **LOC),
        ins.Port(name="http", protocol="tcp", port=8080, count=2, socket_activated=True, **LOC),
    )
    assert m.app is not None
    assert m.app.ports == (
        Port(name="http", protocol="tcp", port=8080, count=2, socket_activated=True),
        Port(name="dns", protocol="udp", port=53),
    )


def test_mount_replaces_same_name_or_same_path() -> None:
    m = apply_all(
        ins.Mount(name="data", path="/data", **LOC),
        ins.Mount(name="logs", path="/var/log", **LOC),
        ins.Mount(name="cache", path="/var/cache", **LOC),
        ins.Mount(name="store", path="/data", read_only=True, **LOC),  # same path as "data"
        ins.Mount(name="cache", path="/tmp/cache", **LOC),  # same name
    )
    assert m.app is not None
    assert m.app.mount_points == (
        MountPoint(name="store", path="/data", read_only=True),
        MountPoint(name="logs", path="/var/log"),
        MountPoint(name="cache", path="/tmp/cache"),
    )


def test_mount_matching_two_entries_keeps_one() -> None:
    m = apply_all(
        ins.Mount(name="a", path="/a", **LOC),
        ins.Mount(name="b", path="/b", **LOC),
        ins.Mount(name="a", path="/b", **LOC),
    )
    assert m.app is not None
    assert m.app.mount_points == (MountPoint(name="a", path="/b"),)


def test_isolator_and_event_handler_replace_by_name() -> None:
    m = apply_all(
        ins.Isolator(name="resource/memory", value_json='{"limit":"1G"}', **LOC),
        ins.Isolator(name="os/linux/no-new-privileges", value_json="true", **LOC),
        ins.Isolator(name="resource/memory", value_json='{"limit":"2G"}', **LOC),
        ins.EventHandler(event="pre-start", argv=("/a",), **LOC),
        ins.EventHandler(event="post-stop", argv=("/b",), **LOC),
        ins.EventHandler(event="pre-start", argv=("/c", "x"), **LOC),
    )
    assert m.app is not None
    assert m.app.isolators == (
        Isolator(name="resource/memory", value_json='{"limit":"2G"}'),
        Isolator(name="os/linux/no-new-privileges", value_json="true"),
    )
    assert m.app.event_handlers == (
        EventHandler(name="pre-start", exec=("/c", "x")),
        EventHandler(name="post-stop", exec=("/b",)),
    )


def test_dependency_readded_moves_to_end() -> None:
    def dep(name: str, **kw: object) -> ins.Dependency:
        return ins.Dependency(reference=name, image_name=name, **kw, **LOC)  # type: ignore[arg-type]

    m = apply_all(
        dep("example.com/a"),
        dep("example.com/b", labels=(("version", "1"),)),
        dep("example.com/a", image_id="sha512-" + "0" * 128, size=10),
    )
    assert m.dependencies == (
        Dependency(image_name="example.com/b", labels=nv(("version", "1"))),
        Dependency(image_name="example.com/a", image_id="sha512-" + "0" * 128, size=10),
    )


def test_path_whitelist_appends_without_duplicates() -> None:
    m = apply_all(
        ins.PathWhitelist(paths=("/bin", "/etc", "/bin"), **LOC),
        ins.PathWhitelist(paths=("/etc", "/usr"), **LOC),
    )
    assert m.path_whitelist == ("/bin", "/etc", "/usr")


@pytest.mark.parametrize(
    "instruction",
    [
        ins.Begin(base="scratch", **LOC),
        ins.Copy(sources=("a",), dest="/a", **LOC),
        ins.Run(argv=("true",), **LOC),
        ins.Sign(key="k", **LOC),
    ],
)
def test_build_instructions_are_not_manifest_edits(instruction: ins.Instruction) -> None:
    with pytest.raises(TypeError, match="does not edit the manifest"):
        manifest_edit.apply(ImageManifest(name="a"), instruction)


def test_inherit_clears_path_whitelist_and_updates_version() -> None:
    base = ImageManifest(
        name="example.com/base",
        labels=nv(("os", "linux")),
        path_whitelist=("/bin/sh",),
        ac_version="0.7.4",
        dependencies=(Dependency(image_name="example.com/lower"),),
    )
    m = manifest_edit.inherit(base)
    assert m.path_whitelist == ()
    assert m.ac_version == "0.8.11"
    assert (m.name, m.labels, m.dependencies) == (base.name, base.labels, base.dependencies)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_edit, "host_os_arch", lambda: ("linux", "amd64"))


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ((), (("os", "linux"), ("arch", "amd64"))),
        ((("version", "1"),), (("version", "1"), ("os", "linux"), ("arch", "amd64"))),
        ((("arch", "aarch64"),), (("arch", "aarch64"), ("os", "linux"))),
        ((("os", "linux"),), (("os", "linux"), ("arch", "amd64"))),
        # another os than the host's: the host's arch would make an invalid pair
        ((("os", "darwin"),), (("os", "darwin"),)),
        ((("arch", "i386"), ("os", "freebsd")), (("arch", "i386"), ("os", "freebsd"))),
    ],
)
def test_finish_adds_host_os_and_arch(
    host: None, labels: tuple[tuple[str, str], ...], expected: tuple[tuple[str, str], ...]
) -> None:
    m = manifest_edit.finish(ImageManifest(name="a", labels=nv(*labels)))
    assert m.labels == nv(*expected)
    assert problems(m) == []


def test_finish_on_real_host_is_valid() -> None:
    assert problems(manifest_edit.finish(ImageManifest(name="a"))) == []
