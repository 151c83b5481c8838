"""`login` and `logout` against the real registry (basic and token auth): credentials are
checked before they are saved, saved 0600, never echoed, and removed by logout."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import Result
from tests.support.registry import Registry

pytest_plugins = ("tests.support.registryfixtures",)


def cli(*args: str | Path, stdin: str | None = None) -> Result:
    proc = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CI": "true"})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _config() -> Path:
    return Path(os.environ["HOME"]) / ".docker" / "config.json"


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_login_checks_saves_and_logout_removes(mode: str, basic_registry: Registry,
                                               token_registry: Registry) -> None:
    reg = basic_registry if mode == "basic" else token_registry
    r = cli("login", reg.host, "-u", "alice", "--password-stdin", *reg.reach_args(),
            stdin=f"{reg.password}\n")
    assert r.code == 0, r.stderr
    assert f"logged in to {reg.host} as alice" in r.stderr
    assert reg.password and reg.password not in r.stderr + r.stdout
    config = _config()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    entry = json.loads(config.read_text())["auths"][reg.host]
    assert base64.b64decode(entry["auth"]).decode() == f"alice:{reg.password}"
    r = cli("logout", reg.host)
    assert r.code == 0, r.stderr
    assert reg.host not in json.loads(config.read_text())["auths"]
    r = cli("logout", reg.host)
    assert r.code == 0 and "not logged in" in r.stderr


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_wrong_password_is_refused_and_not_saved(mode: str, basic_registry: Registry,
                                                 token_registry: Registry) -> None:
    reg = basic_registry if mode == "basic" else token_registry
    secret = "not-the-password-42"
    r = cli("login", reg.host, "-u", "alice", "--password-stdin", *reg.reach_args(),
            stdin=secret + "\n")
    assert r.code == 1, r.stderr
    assert "refused" in r.stderr and "Traceback" not in r.stderr
    assert secret not in r.stderr + r.stdout
    assert not _config().exists()


def test_login_without_a_terminal_needs_password_stdin(basic_registry: Registry) -> None:
    r = cli("login", basic_registry.host, "-u", "alice", *basic_registry.reach_args(), stdin="")
    assert r.code == 2 and "--password-stdin" in r.stderr


def test_password_stdin_needs_a_user(basic_registry: Registry) -> None:
    r = cli("login", basic_registry.host, "--password-stdin", stdin="x\n")
    assert r.code == 2 and "--username" in r.stderr


def test_login_to_a_bad_host_name() -> None:
    r = cli("login", "https://a/b", "-u", "x", "--password-stdin", stdin="x\n")
    assert r.code == 1 and "is not a registry HOST[:PORT]" in r.stderr


def test_insecure_registry_rejects_a_url() -> None:
    r = cli("convert", "docker://x/y", "--insecure-registry", "http://h:1/path")
    assert r.code == 2 and "--insecure-registry" in r.stderr
