"""docker:// references: Docker's naming defaults, digests, and a clear error for each bad one."""

from __future__ import annotations

import pytest

from acbuild.distribution.registry.reference import (
    Reference,
    RegistryError,
    check_host,
    parse_reference,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "expected"), [
    ("docker://busybox", Reference(registry="docker.io", repository="library/busybox",
                                   tag="latest", digest=None)),
    ("docker://busybox:1.36", Reference(registry="docker.io", repository="library/busybox",
                                        tag="1.36", digest=None)),
    ("docker://index.docker.io/library/busybox",
     Reference(registry="docker.io", repository="library/busybox", tag="latest", digest=None)),
    ("docker://docker.io/bitnami/redis:7",
     Reference(registry="docker.io", repository="bitnami/redis", tag="7", digest=None)),
    ("docker://quay.io/coreos/etcd:v3.5.0",
     Reference(registry="quay.io", repository="coreos/etcd", tag="v3.5.0", digest=None)),
    ("docker://127.0.0.1:5000/library/busybox:1.36",
     Reference(registry="127.0.0.1:5000", repository="library/busybox", tag="1.36",
               digest=None)),
    ("docker://localhost/app", Reference(registry="localhost", repository="app",
                                         tag="latest", digest=None)),
    (f"docker://busybox@{DIGEST}", Reference(registry="docker.io",
                                             repository="library/busybox", tag=None,
                                             digest=DIGEST)),
    (f"docker://gcr.io/a/b/c:1@{DIGEST}", Reference(registry="gcr.io", repository="a/b/c",
                                                    tag="1", digest=DIGEST)),
])
def test_parse_applies_docker_defaults(text: str, expected: Reference) -> None:
    ref = parse_reference(text)
    assert ref == expected
    assert parse_reference(ref.url()) == ref


def test_docker_hub_api_lives_at_registry_1() -> None:
    assert parse_reference("docker://busybox").api_host == "registry-1.docker.io"
    assert parse_reference("docker://quay.io/a/b").api_host == "quay.io"


def test_digest_is_what_the_manifest_is_asked_for() -> None:
    ref = parse_reference(f"docker://busybox:1.36@{DIGEST}")
    assert ref.manifest_ref == DIGEST and ref.pinned
    assert parse_reference("docker://busybox:1.36").manifest_ref == "1.36"


@pytest.mark.parametrize(("text", "says"), [
    ("docker://", "names no image"),
    ("docker://Busybox", "must be lower case"),
    ("docker://busybox:", "not a valid tag"),
    ("docker://busybox:-x", "not a valid tag"),
    ("docker://busybox@sha256:abc", "not a sha256 digest"),
    ("docker://busybox@md5:" + "a" * 32, "not a sha256 digest"),
    ("docker://a//b", "repository component ''"),
    ("docker://quay.io/", "no repository"),
    ("docker://host:99999/x", "is not a registry HOST[:PORT]"),
    ("docker://a/" + "b" * 300, "longer than 255"),
    ("docker://x/../etc", "repository component '..'"),
    # RR-3: Python's \w is Unicode; the grammar's (and docker's) is ASCII
    ("docker://busybox:\u0130", "not a valid tag"),
    ("docker://busybox:\u00b2", "not a valid tag"),
    ("docker://busybox:\u0663", "not a valid tag"),
    ("docker://busybox:v\U0001d7d7", "not a valid tag"),
    ("docker://host:\u00b2/x", "is not a registry HOST[:PORT]"),
    ("docker://host:\u0665\u0660\u0660\u0660/x", "is not a registry HOST[:PORT]"),
])
def test_bad_references_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(RegistryError) as e:
        parse_reference(text)
    assert says in e.value.message
    assert "\n" not in e.value.message


def test_check_host_folds_docker_hub_and_rejects_paths() -> None:
    assert check_host("https://index.docker.io/v1/") == "docker.io"
    assert check_host("127.0.0.1:5000") == "127.0.0.1:5000"
    for bad in ("", "a/b", "host:0", "host:x", "host:\u00b2", "host:\u0665\u0660\u0660\u0660"):
        with pytest.raises(RegistryError):
            check_host(bad)


@pytest.mark.parametrize("text", ["docker://alice:hunter2@quay.io/a/b",
                                  "docker://alice:hunter2@quay.io/a/b:1"])
def test_credentials_in_a_reference_are_refused_without_echo(text: str) -> None:
    with pytest.raises(RegistryError) as e:
        parse_reference(text)
    assert "cannot hold credentials" in e.value.message
    assert "hunter2" not in e.value.render() and "alice" not in e.value.render()


def test_check_host_takes_ipv6_alone_and_writes_ports_as_numbers() -> None:
    assert check_host("[::1]") == "[::1]"
    assert check_host("[::1]:5000") == "[::1]:5000"
    assert check_host("Reg.Local:080") == "reg.local:80"
    for bad in ("[::1", "::1", "[::1]:0", "[::1]:x"):
        with pytest.raises(RegistryError):
            check_host(bad)
