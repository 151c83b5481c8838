"""Registries: the credentials docker and podman keep — read for pulls, written by login.

Read from ``$XDG_RUNTIME_DIR/containers/auth.json`` (podman, skopeo, buildah) first, then
``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``); each holds
``{"auths": {"HOST": {"auth": base64("USER:PASSWORD")}}}`` or an ``identitytoken``, and may
name credential helpers: ``credHelpers`` per registry, else ``credsStore`` for all, asked
before the file's own entries, as docker does. ``login`` stores through the helper when one
is named, else in the docker file (mode 0600, atomically, other keys kept); ``logout``
removes the entry from both files and their helpers.
A ``Credential`` never shows its password: not in repr, logs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acbuild.distribution.registry import credhelper
from acbuild.distribution.registry.reference import DOCKER_HUB, RegistryError
from acbuild.fs.atomic import atomic_write
from acbuild.fs.regular import open_regular

_FILE_LIMIT = 4 << 20
# How docker and podman spell Docker Hub's entry.
_HUB_KEYS = ("docker.io", "https://index.docker.io/v1/", "index.docker.io",
             "registry-1.docker.io")
# The user name docker's helpers and config give an identity token: the secret is then an
# OAuth2 refresh token for the registry's token server, not a password.
IDENTITY_TOKEN_USER = "<token>"


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    username: str
    password: str = field(repr=False)
    source: Path | None = None  # the file it came from, for messages
    helper: str | None = None  # the credential helper that gave it

    @property
    def identity_token(self) -> bool:
        return self.username == IDENTITY_TOKEN_USER

    @property
    def who(self) -> str:
        """How messages name it: the user, never the secret."""
        return "the stored identity token" if self.identity_token else \
            f"user {self.username!r}"

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__


def auth_files(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The files searched, in order."""
    env = os.environ if env is None else env
    files = []
    if runtime := env.get("XDG_RUNTIME_DIR"):
        files.append(Path(runtime) / "containers" / "auth.json")
    files.append(docker_config(env))
    return tuple(files)


def docker_config(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("DOCKER_CONFIG") or str(Path(env.get("HOME") or Path.home()) / ".docker")
    return Path(base) / "config.json"


def _keys(registry: str) -> tuple[str, ...]:
    if registry == DOCKER_HUB:
        return _HUB_KEYS
    return (registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/",
            f"https://{registry}/v2/")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open_regular(path) as f:
            data = f.read(_FILE_LIMIT + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RegistryError(f"cannot read credentials file {path}: {e.strerror or e}") from None
    if len(data) > _FILE_LIMIT:
        raise RegistryError(f"credentials file {path} is larger than 4 MiB")
    try:
        doc = json.loads(data) if data.strip() else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        # The parser's message can quote the file's text: a password, say. Name only the file.
        raise RegistryError(f"credentials file {path} is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
        raise RegistryError(f"credentials file {path}: expected an object with \"auths\"")
    if not isinstance(doc.get("credHelpers", {}), dict) or \
            not isinstance(doc.get("credsStore", ""), str):
        raise RegistryError(f"credentials file {path}: \"credHelpers\" must be an object "
                            "and \"credsStore\" a string")
    return doc


def _helper(doc: dict[str, Any], registry: str) -> str | None:
    """The credential helper a config names for ``registry``: its own, else the store."""
    helpers = doc.get("credHelpers", {})
    for key in _keys(registry):
        if isinstance(helpers.get(key), str) and helpers[key]:
            return str(helpers[key])
    return doc.get("credsStore") or None


def _server(registry: str) -> str:
    """The server URL docker hands a helper for ``registry``."""
    return _HUB_KEYS[1] if registry == DOCKER_HUB else registry


def _decode(entry: object, path: Path, key: str) -> Credential | None:
    if not isinstance(entry, dict):
        raise RegistryError(f"credentials file {path}: the entry for {key!r} is not an object")
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credential(username=entry["username"], password=entry["password"], source=path)
    if isinstance(token := entry.get("identitytoken"), str) and token:
        return Credential(username=IDENTITY_TOKEN_USER, password=token, source=path)
    auth = entry.get("auth")
    if not auth:
        return None  # e.g. a helper's placeholder
    try:
        user, colon, password = base64.b64decode(str(auth), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise RegistryError(f"credentials file {path}: the \"auth\" of {key!r} is not "
                            "base64 of USER:PASSWORD") from None
    if not colon or not user:
        raise RegistryError(f"credentials file {path}: the \"auth\" of {key!r} is not "
                            "base64 of USER:PASSWORD")
    return Credential(username=user, password=password, source=path)


def lookup(registry: str, env: Mapping[str, str] | None = None) -> Credential | None:
    """The stored credential for ``registry`` (HOST[:PORT]), or None."""
    env = os.environ if env is None else env
    for path in auth_files(env):
        doc = _read(path)
        if doc is None:
            continue
        if (helper := _helper(doc, registry)) is not None and \
                (got := credhelper.get(helper, _server(registry), env)) is not None:
            return Credential(username=got[0], password=got[1], source=path, helper=helper)
        auths = doc.get("auths", {})
        for key in _keys(registry):
            if key in auths and (found := _decode(auths[key], path, key)) is not None:
                return found
    return None


def store(registry: str, credential: Credential, env: Mapping[str, str] | None = None) -> str:
    """Save ``credential`` for ``registry`` through the docker config's credential helper, or
    in the file itself; returns where, for the user."""
    env = os.environ if env is None else env
    path = docker_config(env)
    doc = _read(path) or {}
    if (helper := _helper(doc, registry)) is not None:
        credhelper.store(helper, _server(registry), credential.username, credential.password,
                         env)
        return f"the credential helper {credhelper.program(helper)} (named in {path})"
    auths = dict(doc.get("auths", {}))
    for key in _keys(registry):
        auths.pop(key, None)
    raw = f"{credential.username}:{credential.password}".encode()
    auths[_keys(registry)[0] if registry != DOCKER_HUB else _HUB_KEYS[1]] = {
        "auth": base64.b64encode(raw).decode()}
    _write(path, {**doc, "auths": auths})
    return str(path)


def remove(registry: str, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Forget ``registry``'s credentials in every file and the helpers they name; returns
    where they were, for the user."""
    env = os.environ if env is None else env
    changed = []
    for path in auth_files(env):
        doc = _read(path)
        if doc is None:
            continue
        if (helper := _helper(doc, registry)) is not None and \
                credhelper.erase(helper, _server(registry), env):
            changed.append(f"the credential helper {credhelper.program(helper)}")
        auths = dict(doc.get("auths", {}))
        if not any(key in auths for key in _keys(registry)):
            continue
        for key in _keys(registry):
            auths.pop(key, None)
        _write(path, {**doc, "auths": auths})
        changed.append(str(path))
    return tuple(changed)


def _write(path: Path, doc: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise RegistryError(f"cannot create {path.parent}: {e.strerror or e}") from None
    with atomic_write(path, mode=0o600) as f:
        f.write(json.dumps(doc, indent="\t").encode() + b"\n")
