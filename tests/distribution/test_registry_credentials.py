"""Credentials for registries: read docker's and podman's files, write docker's (0600,
atomically, other keys kept), and never show a password."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from acbuild.distribution.registry import credentials
from acbuild.distribution.registry.credentials import Credential
from acbuild.distribution.registry.reference import RegistryError


def _env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}


def _write(path: Path, auths: dict[str, object], **extra: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": auths, **extra}))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_reads_docker_config(tmp_path: Path) -> None:
    env = _env(tmp_path)
    _write(tmp_path / "home/.docker/config.json",
           {"https://registry.example:5000": {"auth": _b64("bob:s3:cret")},
            "https://index.docker.io/v1/": {"auth": _b64("hub:pw")}})
    found = credentials.lookup("registry.example:5000", env)
    assert found is not None and (found.username, found.password) == ("bob", "s3:cret")
    hub = credentials.lookup("docker.io", env)
    assert hub is not None and hub.username == "hub"
    assert credentials.lookup("other.example", env) is None


def test_podman_auth_file_comes_first(tmp_path: Path) -> None:
    env = _env(tmp_path)
    _write(tmp_path / "home/.docker/config.json", {"reg.example": {"auth": _b64("docker:x")}})
    _write(tmp_path / "run/containers/auth.json", {"reg.example": {"auth": _b64("podman:y")}})
    found = credentials.lookup("reg.example", env)
    assert found is not None and found.username == "podman"


def test_docker_config_env_moves_the_file(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "nohome"), "DOCKER_CONFIG": str(tmp_path / "dc")}
    _write(tmp_path / "dc/config.json", {"reg.example": {"auth": _b64("u:p")}})
    assert credentials.lookup("reg.example", env) is not None


def test_store_and_remove_keep_other_keys_and_mode_0600(tmp_path: Path) -> None:
    env = _env(tmp_path)
    path = tmp_path / "home/.docker/config.json"
    _write(path, {"keep.example": {"auth": _b64("k:k")}}, psFormat="table")
    written = credentials.store("reg.example:5000", Credential(username="u", password="p"), env)
    assert written == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["psFormat"] == "table" and "keep.example" in doc["auths"]
    found = credentials.lookup("reg.example:5000", env)
    assert found is not None and found.password == "p"
    assert credentials.remove("reg.example:5000", env) == (str(path),)
    assert credentials.lookup("reg.example:5000", env) is None
    assert "keep.example" in json.loads(path.read_text())["auths"]
    assert credentials.remove("reg.example:5000", env) == ()
    assert not list(path.parent.glob(".*.tmp"))


def test_password_never_in_repr_or_str() -> None:
    secret = "hunter2-very-secret"
    c = Credential(username="alice", password=secret)
    assert secret not in repr(c) and secret not in str(c) and secret not in f"{c}"
    assert secret not in repr([c]) and secret not in repr({"c": c})


@pytest.mark.parametrize("content", [
    '{"auths": {"reg.example": {"auth": "%%%not-base64"}}}',
    '{"auths": {"reg.example": {"auth": "' + _b64("no-colon-secretpw") + '"}}}',
    '{"auths": ["x"]}',
    '{"auths": {"reg.example": {"auth": "hunter2secret"',
])
def test_bad_files_are_named_without_their_contents(tmp_path: Path, content: str) -> None:
    env = _env(tmp_path)
    path = tmp_path / "home/.docker/config.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(RegistryError) as e:
        credentials.lookup("reg.example", env)
    assert str(path) in e.value.message
    assert "hunter2" not in e.value.render() and "secretpw" not in e.value.render()
    assert "%%%" not in e.value.render()


def test_the_credentials_file_is_private_while_it_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Red-team RP-1: the temporary file login writes was 0644 until the commit."""
    real = credentials.atomic_write
    seen: list[int] = []

    @contextlib.contextmanager
    def spy(path: Path, *, mode: int | None = None) -> Iterator[BinaryIO]:
        with real(path, mode=mode) as f:
            seen.append(stat.S_IMODE(os.fstat(f.fileno()).st_mode))
            yield f

    monkeypatch.setattr(credentials, "atomic_write", spy)
    old = os.umask(0o022)
    try:
        credentials.store("reg.example", Credential(username="u", password="p"),
                          _env(tmp_path))
        credentials.remove("reg.example", _env(tmp_path))
    finally:
        os.umask(old)
    assert seen == [0o600, 0o600]
