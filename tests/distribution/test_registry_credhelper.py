"""Docker credential helpers (credsStore, credHelpers) and identity tokens: a real helper
program speaking the protocol, and the real registry's token server taking a refresh token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acbuild.distribution.registry import credentials, credhelper
from acbuild.distribution.registry.reference import RegistryError
from tests.support.cli import Result
from tests.support.registry import Registry

pytest_plugins = ("tests.support.registryfixtures",)

# A helper as docker-credential-helpers behave: one file per server URL in $FAKE_STORE, "not
# found" on stdout with exit 1. With $FAKE_FAIL it prints a would-be secret on stdout and a
# reason on stderr, and fails.
_HELPER = """#!{python}
import json, os, sys
store = os.environ["FAKE_STORE"]
verb = sys.argv[1]
data = sys.stdin.read()
if os.environ.get("FAKE_FAIL"):
    print("SECRET-ON-STDOUT")
    print("keychain is locked", file=sys.stderr)
    sys.exit(3)
url = json.loads(data)["ServerURL"] if verb == "store" else data
path = os.path.join(store, url.replace("/", "_").replace(":", "_"))
if verb == "store":
    open(path, "w").write(data)
elif not os.path.exists(path):
    print("credentials not found in native keychain")
    sys.exit(1)
elif verb == "get":
    print(open(path).read())
elif verb == "erase":
    os.unlink(path)
"""


def _setup(tmp_path: Path, config: dict[str, object]) -> dict[str, str]:
    """An environment whose docker config is ``config`` and whose PATH holds the helper
    ``docker-credential-fake``."""
    bin_dir, store = tmp_path / "bin", tmp_path / "store"
    bin_dir.mkdir()
    store.mkdir()
    helper = bin_dir / "docker-credential-fake"
    helper.write_text(_HELPER.format(python=sys.executable))
    helper.chmod(0o755)
    (tmp_path / "home/.docker").mkdir(parents=True)
    (tmp_path / "home/.docker/config.json").write_text(json.dumps(config))
    return {"HOME": str(tmp_path / "home"), "FAKE_STORE": str(store),
            "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _keep(env: dict[str, str], server: str, user: str, secret: str) -> None:
    doc = {"ServerURL": server, "Username": user, "Secret": secret}
    name = server.replace("/", "_").replace(":", "_")
    Path(env["FAKE_STORE"], name).write_text(json.dumps(doc))


def test_a_registry_helper_comes_before_the_file(tmp_path: Path) -> None:
    env = _setup(tmp_path, {"auths": {"reg.example:5000": {"auth": "ZmlsZTpwdw=="}},
                            "credHelpers": {"reg.example:5000": "fake"}})
    _keep(env, "reg.example:5000", "bob", "from-helper")
    found = credentials.lookup("reg.example:5000", env)
    assert found is not None
    assert (found.username, found.password, found.helper) == ("bob", "from-helper", "fake")
    assert "from-helper" not in repr(found)


def test_the_store_serves_every_registry_and_a_miss_falls_back_to_the_file(
        tmp_path: Path) -> None:
    env = _setup(tmp_path, {"auths": {"reg.example": {"auth": "ZmlsZTpwdw=="}},
                            "credsStore": "fake"})
    _keep(env, "https://index.docker.io/v1/", "hubuser", "hubpw")
    hub = credentials.lookup("docker.io", env)  # docker hands helpers Hub's v1 URL
    assert hub is not None and (hub.username, hub.password) == ("hubuser", "hubpw")
    found = credentials.lookup("reg.example", env)  # the helper holds none: the file's entry
    assert found is not None and (found.username, found.password, found.helper) == \
        ("file", "pw", None)
    assert credentials.lookup("other.example", env) is None


def test_login_stores_through_the_helper_and_logout_erases(tmp_path: Path) -> None:
    env = _setup(tmp_path, {"credsStore": "fake"})
    config = tmp_path / "home/.docker/config.json"
    before = config.read_text()
    where = credentials.store("reg.example", credentials.Credential(username="u",
                                                                    password="p4ss"), env)
    assert "docker-credential-fake" in where
    assert config.read_text() == before  # the secret is not written to the file
    found = credentials.lookup("reg.example", env)
    assert found is not None and found.password == "p4ss"
    assert credentials.remove("reg.example", env) == ("the credential helper "
                                                      "docker-credential-fake",)
    assert credentials.lookup("reg.example", env) is None
    assert credentials.remove("reg.example", env) == ()


def test_a_missing_helper_is_named(tmp_path: Path) -> None:
    env = _setup(tmp_path, {"credsStore": "desktop"})
    with pytest.raises(RegistryError, match=r"docker-credential-desktop.*not on PATH"):
        credentials.lookup("reg.example", env)


def test_a_failing_helper_shows_its_reason_never_its_stdout(tmp_path: Path) -> None:
    env = {**_setup(tmp_path, {"credsStore": "fake"}), "FAKE_FAIL": "1"}
    with pytest.raises(RegistryError) as raised:
        credentials.lookup("reg.example", env)
    text = str(raised.value)
    assert "keychain is locked" in text and "exit 3" in text
    assert "SECRET" not in text


@pytest.mark.parametrize("helper", ["../evil", ""])
def test_a_helper_name_is_not_a_path(tmp_path: Path, helper: str) -> None:
    env = _setup(tmp_path, {"credHelpers": {"reg.example": helper}, "credsStore": helper})
    if helper:
        with pytest.raises(RegistryError, match="not on PATH"):
            credentials.lookup("reg.example", env)
    else:
        assert credentials.lookup("reg.example", env) is None  # empty means none, as docker


def test_an_identity_token_in_the_file(tmp_path: Path) -> None:
    env = _setup(tmp_path, {"auths": {"reg.example": {"identitytoken": "refresh-me"}}})
    found = credentials.lookup("reg.example", env)
    assert found is not None and found.identity_token and found.password == "refresh-me"
    assert "refresh-me" not in repr(found) and found.who == "the stored identity token"


def _own_helper(env: dict[str, str], script: str) -> None:
    """Replace the fake helper with ``script`` (sh)."""
    helper = Path(env["PATH"].split(":")[0]) / "docker-credential-fake"
    helper.write_text("#!/bin/sh\n" + script)


def test_deeply_nested_json_is_an_error_not_a_crash(tmp_path: Path) -> None:
    env = _setup(tmp_path, {"credsStore": "fake"})
    _own_helper(env, "printf '%100000s' '' | tr ' ' '['\n")
    with pytest.raises(RegistryError, match="printed no JSON credential"):
        credentials.lookup("reg.example", env)
    config = tmp_path / "home/.docker/config.json"
    config.write_text('{"auths": ' + "[" * 100_000)
    with pytest.raises(RegistryError, match="is not valid JSON"):
        credentials.lookup("reg.example", env)


def test_endless_output_is_cut_off_without_holding_it(tmp_path: Path) -> None:
    env = _setup(tmp_path, {"credsStore": "fake"})
    _own_helper(env, "exec yes\n")
    start = time.monotonic()
    with pytest.raises(RegistryError, match="printed more than 1 MiB"):
        credentials.lookup("reg.example", env)
    assert time.monotonic() - start < 10
    # stderr without end, then failing: the reason is its first line, cut short
    _own_helper(env, "yes 'locked keychain' | head -c 50000000 >&2; exit 1\n")
    with pytest.raises(RegistryError) as raised:
        credentials.lookup("reg.example", env)
    assert "locked keychain" in str(raised.value) and len(str(raised.value)) < 400


def test_a_failing_store_never_shows_the_secret_it_was_given(tmp_path: Path) -> None:
    env = _setup(tmp_path, {"credsStore": "fake"})
    _own_helper(env, 'in=$(cat); echo "store: cannot parse $in" >&2; exit 1\n')
    with pytest.raises(RegistryError) as raised:
        credentials.store("reg.example", credentials.Credential(
            username="u", password='pa"ss\\word'), env)
    assert "failed (store, exit 1)" in str(raised.value)
    assert not any(window in str(raised.value) for window in ("pa\"s", "ss\\w", "word"))
    # echoed as given: replaced in the reason, which is shown
    _own_helper(env, 'cat >&2; exit 1\n')
    with pytest.raises(RegistryError) as raised:
        credentials.store("reg.example", credentials.Credential(username="u",
                                                                password="hunter22"), env)
    assert '"Secret": "***"' in str(raised.value) and "hunter" not in str(raised.value)


def test_a_helper_that_hangs_is_stopped(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credhelper, "_TIMEOUT", 1.0)
    env = _setup(tmp_path, {"credsStore": "fake"})
    pid = tmp_path / "pid"
    _own_helper(env, f"echo $$ > {pid}; exec sleep 300\n")
    start = time.monotonic()
    with pytest.raises(RegistryError, match="did not answer within 1 s"):
        credentials.lookup("reg.example", env)
    assert time.monotonic() - start < 5
    assert not Path(f"/proc/{int(pid.read_text())}").exists()


def test_a_helper_runs_in_the_callers_session_and_group(tmp_path: Path) -> None:
    """So that it can ask on the terminal (/dev/tty), as a keychain unlock prompt does."""
    env = _setup(tmp_path, {"credsStore": "fake"})
    _own_helper(env, "set -- $(cat /proc/$$/stat); shift 4\n"  # now $1 pgrp, $2 session
                     'echo "{\\"Username\\": \\"$1\\", \\"Secret\\": \\"$2\\"}"\n')
    found = credentials.lookup("reg.example", env)
    assert found is not None
    assert (int(found.username), int(found.password)) == (os.getpgid(0), os.getsid(0))


def test_a_child_left_holding_the_pipe_does_not_delay_the_answer(tmp_path: Path) -> None:
    env = _setup(tmp_path, {"credsStore": "fake"})
    _own_helper(env, 'sleep 300 & echo \'{"Username": "u", "Secret": "s"}\'\n')
    start = time.monotonic()
    found = credentials.lookup("reg.example", env)
    assert found is not None and found.password == "s"
    assert time.monotonic() - start < 5


def test_a_helper_in_the_current_directory_is_not_run(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    env = _setup(tmp_path, {"credsStore": "fake"})
    ran = tmp_path / "ran"
    _own_helper(env, f"touch {ran}\n")
    bin_dir = env["PATH"].split(":")[0]
    monkeypatch.chdir(bin_dir)  # a cloned repository shipping a "helper"
    for path in ("/usr/bin:/bin:", ":/usr/bin", ".:/usr/bin", "bin:/usr/bin"):
        with pytest.raises(RegistryError, match="not on PATH"):
            credentials.lookup("reg.example", {**env, "PATH": path})
    assert not ran.exists()


def test_a_failed_lookup_is_asked_once_per_build(tmp_path: Path) -> None:
    env = _setup(tmp_path, {"credHelpers": {"127.0.0.1:9": "fake"}})
    calls = tmp_path / "calls"
    _own_helper(env, f"echo call >> {calls}; echo 'keychain is locked' >&2; exit 1\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Acfile").write_text("BEGIN docker://127.0.0.1:9/x:1\nNAME example.com/x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "acbuild", "build", str(ctx / "Acfile"), "-o",
         str(tmp_path / "x.aci"), "--insecure-skip-verify", "--insecure-registry",
         "127.0.0.1:9"], capture_output=True, text=True, timeout=120,
        env={**os.environ, **env, "CI": "true"})
    assert proc.returncode == 1, proc.stderr
    assert "keychain is locked" in proc.stderr and "Traceback" not in proc.stderr
    assert calls.read_text().count("call") == 1


# ---- against the real registry ----------------------------------------------------------


def _convert(reg: Registry, tmp_path: Path, env: dict[str, str]) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "acbuild", "convert", reg.ref("library/busybox:1.36"),
         "-o", str(tmp_path / "out.aci"), "--insecure-skip-verify", *reg.reach_args()],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env, "CI": "true"})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_a_pull_with_an_identity_token_from_a_helper(token_registry: Registry,
                                                     tmp_path: Path) -> None:
    assert token_registry.token_server is not None
    env = _setup(tmp_path, {"credHelpers": {token_registry.host: "fake"}})
    _keep(env, token_registry.host, "<token>", token_registry.token_server.refresh_token)
    r = _convert(token_registry, tmp_path, env)
    assert r.code == 0, r.stderr
    posts = [q for q in token_registry.token_server.requests if q.get("method") == "POST"]
    assert posts and all(q["grant_type"] == "refresh_token" for q in posts)
    assert all(q["scope"] == "repository:library/busybox:pull" for q in posts)


def test_a_refused_identity_token_is_one_line(token_registry: Registry, tmp_path: Path) -> None:
    env = _setup(tmp_path, {"auths": {token_registry.host: {"identitytoken": "stale"}}})
    r = _convert(token_registry, tmp_path, env)
    assert r.code == 1 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "refused the stored identity token" in errors[0], r.stderr
    assert "stale" not in r.stderr
    assert not (tmp_path / "out.aci").exists()
