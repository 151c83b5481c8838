"""Tests for image/manifest_rules: every AppC rule, and that actool rejects what they report."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.image import manifest_rules as appc
from acbuild.image.manifest import (
    App,
    Dependency,
    EventHandler,
    ImageManifest,
    Isolator,
    MountPoint,
    Port,
    to_json_bytes,
)
from acbuild.image.manifest_rules import problems
from tests.image.test_manifest import ID, actool_ok, app_with, full_manifest, nv, write_aci


def test_full_manifest_is_valid() -> None:
    assert problems(full_manifest()) == []


IDENT = ("(lower-case letters, digits, '-', '.', '_', '~' and '/', starting and ending with a "
         "letter or digit)")
NAME_RULE = "(lower-case letters and digits, separated by single '-')"


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        (ImageManifest(name="a", ac_version=""), "acVersion must be set"),
        (ImageManifest(name="a", ac_version="1.0"), "acVersion '1.0' is not a SemVer version"),
        (ImageManifest(name="a", ac_version="0.0.0"), "acVersion must not be 0.0.0"),
        (ImageManifest(name=""), "name must not be empty"),
        (ImageManifest(name="Ex/app"), f"name 'Ex/app' is not an ACIdentifier {IDENT}"),
        (ImageManifest(name="a-"), "name 'a-' is not an ACIdentifier"),
        (ImageManifest(name="a", labels=nv(Foo="1")), "label name 'Foo' is not an ACIdentifier"),
        (
            ImageManifest(name="a", labels=nv(name="x")),
            "'name' cannot be a label: the image name is the manifest's name field",
        ),
        (
            ImageManifest(name="a", labels=(*nv(v="1"), *nv(v="2"))),
            "duplicate label 'v'",
        ),
        (
            ImageManifest(name="a", labels=nv(os="plan9")),
            "bad os 'plan9' (must be one of: darwin, freebsd, linux)",
        ),
        (
            ImageManifest(name="a", labels=nv(os="darwin", arch="amd64")),
            "bad arch 'amd64' for darwin (must be one of: i386, x86_64)",
        ),
        (
            ImageManifest(
                name="a", dependencies=(Dependency(image_name="b", labels=nv(os="hurd")),)
            ),
            "dependency 'b': bad os 'hurd'",
        ),
        (app_with(user=""), "app user must not be empty"),
        (app_with(group=""), "app group must not be empty"),
        (app_with(supplementary_gids=(-1,)), "supplementary GID -1 is negative"),
        (app_with(working_directory="srv"), "working directory 'srv' must be an absolute path"),
        (
            app_with(environment=nv(**{"1A": "x"})),
            "environment variable name '1A' is not valid (a letter or '_', then letters, "
            "digits, '_', '.' or '-')",
        ),
        (
            app_with(environment=(*nv(A="1"), *nv(A="2"))),
            "duplicate environment variable 'A'",
        ),
        (
            app_with(isolators=(Isolator(name="os/linux/frobnicate", value_json="{}"),)),
            "unknown isolator 'os/linux/frobnicate'",
        ),
        (
            app_with(isolators=(Isolator(name="resource/cpu", value_json='{"limit":"x"}'),)),
            "isolator resource/cpu: limit 'x' is not a quantity such as '500m', '2' or '1Gi'",
        ),
        (
            app_with(isolators=(Isolator(name="os/linux/cpu-shares", value_json="512"),) * 2),
            "duplicate isolator 'os/linux/cpu-shares'",
        ),
        (
            app_with(
                isolators=(
                    Isolator(name="os/linux/seccomp-retain-set", value_json='{"set":["a"]}'),
                    Isolator(name="os/linux/seccomp-remove-set", value_json='{"set":["b"]}'),
                )
            ),
            "isolators seccomp-retain-set and seccomp-remove-set exclude each other",
        ),
        (
            app_with(mount_points=(MountPoint(name="Data", path="/d"),)),
            f"mount point name 'Data' is not an ACName {NAME_RULE}",
        ),
        (
            app_with(mount_points=(MountPoint(name="d", path="data"),)),
            "mount point 'd' path 'data' must be an absolute path",
        ),
        (
            app_with(mount_points=(MountPoint(name="d", path=""),)),
            "mount point 'd' path must not be empty",
        ),
        (
            app_with(
                mount_points=(MountPoint(name="d", path="/a"), MountPoint(name="d", path="/b"))
            ),
            "duplicate mount point 'd'",
        ),
        (
            app_with(ports=(Port(name="http_1", protocol="tcp", port=80),)),
            "port name 'http_1' is not an ACName",
        ),
        (app_with(ports=(Port(name="p", protocol="", port=80),)), "port 'p' has no protocol"),
        (app_with(ports=(Port(name="p", protocol="tcp", port=0),)), "port 0 is out of range"),
        (app_with(ports=(Port(name="p", protocol="tcp", port=65536),)), "port 65536 is out of"),
        (
            app_with(ports=(Port(name="p", protocol="tcp", port=80, count=0),)),
            "port count 0 must be at least 1",
        ),
        (
            app_with(ports=(Port(name="p", protocol="tcp", port=65535, count=2),)),
            "port range 65535-65536 ends beyond 65535",
        ),
        (
            app_with(
                ports=(
                    Port(name="p", protocol="tcp", port=1),
                    Port(name="p", protocol="udp", port=2),
                )
            ),
            "duplicate port 'p'",
        ),
        (
            app_with(event_handlers=(EventHandler(name="on-start", exec=("/x",)),)),
            "event handler 'on-start' is not one of: pre-start, post-stop",
        ),
        (
            app_with(event_handlers=(EventHandler(name="pre-start", exec=("/x",)),) * 2),
            "duplicate event handler 'pre-start'",
        ),
        (
            ImageManifest(name="a", dependencies=(Dependency(image_name="B"),)),
            "dependency name 'B' is not an ACIdentifier",
        ),
        (
            ImageManifest(
                name="a", dependencies=(Dependency(image_name="b", image_id="sha512-"),)
            ),
            "image ID 'sha512-' is not 'sha512-' followed by the image's hash",
        ),
        (
            ImageManifest(
                name="a", dependencies=(Dependency(image_name="b", image_id="sha256-" + "a" * 64),)
            ),
            "image ID 'sha256-",
        ),
        (
            ImageManifest(name="a", dependencies=(Dependency(image_name="b", labels=nv(X="1")),)),
            "dependency 'b': label name 'X' is not an ACIdentifier",
        ),
        (
            ImageManifest(name="a", path_whitelist=("bin/sh",)),
            "pathWhitelist entry 'bin/sh' must be an absolute path",
        ),
        (
            ImageManifest(name="a", annotations=nv(Author="me")),
            "annotation name 'Author' is not an ACIdentifier",
        ),
        (
            ImageManifest(name="a", annotations=(*nv(a="1"), *nv(a="2"))),
            "duplicate annotation 'a'",
        ),
        (
            ImageManifest(name="a", annotations=nv(created="2024-01-02")),
            "annotation 'created' '2024-01-02' is not an RFC 3339 date such as "
            "'2006-01-02T15:04:05Z'",
        ),
        (
            ImageManifest(name="a", annotations=nv(created="2023-02-29T00:00:00Z")),
            "annotation 'created' '2023-02-29T00:00:00Z' is not an RFC 3339 date",
        ),
        (
            ImageManifest(name="a", annotations=nv(homepage="ftp://example.com")),
            "annotation 'homepage' 'ftp://example.com' is not an http or https URL",
        ),
        (
            ImageManifest(name="a", annotations=nv(documentation="example.com/docs")),
            "annotation 'documentation' 'example.com/docs' is not an http or https URL",
        ),
    ],
)
def test_each_rule_is_reported(m: ImageManifest, expected: str) -> None:
    found = problems(m)
    assert len(found) == 1, found
    assert found[0].startswith(expected)


@pytest.mark.parametrize(
    "m",
    [
        ImageManifest(name="a", ac_version="0.8.11-rc.1+build.5"),
        ImageManifest(name="example.com/a_b~c.d/e-f"),
        ImageManifest(name="a", labels=nv(os="freebsd", arch="arm")),
        ImageManifest(name="a", labels=nv(os="linux")),
        app_with(exec=("sh", "-c", "x")),  # the spec lets the executor search PATH
        app_with(user="/etc/passwd-user", group="root"),
        app_with(environment=nv(_a=".", **{"A.b-c": "1"})),
        app_with(ports=(Port(name="p", protocol="tcp", port=65535, count=1),)),
        app_with(ports=(Port(name="p", protocol="tcp", port=1, count=65535),)),
        ImageManifest(name="a", dependencies=(Dependency(image_name="b", image_id=ID[:39]),)),
        ImageManifest(name="a", annotations=nv(created="2024-02-29T23:59:59.123+05:30")),
        ImageManifest(name="a", annotations=nv(homepage="https://example.com/x")),
        ImageManifest(name="a", annotations=nv(documentation="http://example.com")),
    ],
)
def test_valid_values_pass(m: ImageManifest) -> None:
    assert problems(m) == []


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("resource/memory", '{"limit":"1Gi","request":"500M"}', None),
        ("resource/cpu", '{"limit":"500m"}', None),
        ("resource/cpu", '{"limit":"1","default":true}', "default must be false"),
        ("resource/memory", "[1]", 'value must be an object such as {"limit": "1G"}'),
        ("resource/memory", '{"limit":5}', None),
        ("resource/memory", '{"limit":" 1G "}', None),
        ("resource/memory", '{"limit":true}', "limit True is not a quantity"),
        ("resource/network-bandwidth", '{"default":true,"limit":"1G"}', None),
        ("resource/network-bandwidth", '{"limit":"1G"}', 'needs "default": true'),
        ("resource/block-iops", '{"default":true,"request":"1"}', "takes no request, only a limit"),
        ("os/linux/capabilities-retain-set", '{"set":["CAP_NET_ADMIN"]}', None),
        ("os/linux/capabilities-remove-set", '{"set":[]}', "set must be a non-empty list"),
        ("os/linux/capabilities-remove-set", '{"set":[1]}', "set must hold non-empty strings"),
        ("os/linux/seccomp-retain-set", '{"set":["@rkt/default-whitelist"],"errno":"EPERM"}', None),
        ("os/linux/seccomp-remove-set", '{"set":["x"],"errno":"eperm"}', "errno 'eperm' must be"),
        ("os/linux/no-new-privileges", "true", None),
        ("os/linux/no-new-privileges", '"yes"', "value must be true or false"),
        ("os/linux/oom-score-adj", "-1000", None),
        ("os/linux/oom-score-adj", "1001", "value must be an integer from -1000 to 1000"),
        ("os/linux/cpu-shares", "1", "value must be an integer from 2 to 262144"),
        ("os/linux/selinux-context", '{"user":"u","role":"r","type":"t","level":"s0:c1"}', None),
        (
            "os/linux/selinux-context",
            '{"user":"u:x","role":"r","type":"t","level":"s0"}',
            "user 'u:x'",
        ),
        ("os/unix/sysctl", '{"net.ipv4.ip_forward":"1"}', None),
        ("os/unix/sysctl", '{"a":1}', "value must be an object of strings"),
        ("os/unix/sysctl", "{", "value is not valid JSON"),
        ("os/linux/seccomp-remove-set", '{"set":["x"],"errno":"E2BIG"}', None),
        ("os/linux/apparmor-profile", '{"profile":"rkt-default"}', None),
        ("os/linux/apparmor-profile", '"x"', "value must be an object such as"),
        ("resource/memory", "null", "value is missing"),
    ],
)
def test_isolator_values(name: str, value: str, expected: str | None) -> None:
    problem = appc.isolator_value_problem(name, value)
    if name not in appc.KNOWN_ISOLATORS:
        assert problem == f"unknown isolator {name!r}"
    elif expected is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.startswith(f"isolator {name}: {expected}")


def test_identifier_predicates() -> None:
    assert appc.is_ac_identifier("example.com/app-1")
    assert not appc.is_ac_identifier("example.com/")
    assert not appc.is_ac_identifier(None)
    assert appc.is_ac_name("app-1")
    assert not appc.is_ac_name("app.1")


@pytest.mark.parametrize(
    "m",
    [
        ImageManifest(name="Bad"),
        ImageManifest(name="a", labels=nv(os="linux", arch="x86_64")),
        app_with(environment=nv(**{"1A": "x"})),
        app_with(isolators=(Isolator(name="os/linux/cpu-shares", value_json="1"),)),
        app_with(isolators=(Isolator(name="os/linux/apparmor-profile", value_json='"x"'),)),
        ImageManifest(name="a", annotations=nv(created="yesterday")),
    ],
)
def test_actool_rejects_what_problems_reports(tmp_path: Path, m: ImageManifest) -> None:
    assert problems(m)
    assert not actool_ok(write_aci(tmp_path / "bad.aci", to_json_bytes(m)))


def test_warnings_name_what_the_reference_lets_through() -> None:
    m = ImageManifest(
        name="a",
        labels=nv(arch="amd64"),
        dependencies=(Dependency(image_name="b", image_id="sha512-..."),),
        app=App(exec=("/bin/a", ""), event_handlers=(EventHandler(name="pre-start", exec=()),),
                extra=(("supplementaryGids", "[1]"),)),
    )
    assert problems(m) == []
    assert appc.warnings(m) == [
        "label 'arch' means nothing without an 'os' label (spec/aci.md)",
        "image ID 'sha512-...' is not 'sha512-' followed by 32 to 128 lower-case hex digits: "
        "no image will match it",
        "app exec has an empty argument",
        "event handler 'pre-start' has no exec",
        "app field 'supplementaryGids' is not a spec field; Go readers take it as "
        "'supplementaryGIDs'",
    ]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["resource/memory"] * 2, []),
        (["os/linux/no-new-privileges"] * 2, []),
        (["os/linux/cpu-shares"] * 2, ["duplicate isolator 'os/linux/cpu-shares'"]),
        (["os/linux/capabilities-retain-set", "os/linux/capabilities-remove-set"],
         ["isolators capabilities-retain-set and capabilities-remove-set exclude each other"]),
        (["os/linux/seccomp-retain-set", "os/linux/seccomp-remove-set"],
         ["isolators seccomp-retain-set and seccomp-remove-set exclude each other"]),
    ],
)
def test_isolator_sets(names: list[str], expected: list[str]) -> None:
    assert appc.isolator_set_problems(names) == expected
