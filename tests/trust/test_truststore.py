"""Tests for acbuild.trust.truststore: rkt's layout, whole-segment prefixes, add/list/remove."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.errors import TrustError
from acbuild.trust.gpg import scan_keys
from acbuild.trust.truststore import TrustStore, check_prefix, default_location, prefix_matches
from tests.support.gpghelp import Keys


@pytest.mark.parametrize(
    ("prefix", "name", "expected"),
    [
        ("example.com/app", "example.com/app", True),
        ("example.com/app", "example.com/app/x", True),
        ("example.com/app/", "example.com/app/x", True),
        ("example.com/app", "example.com/apple", False),
        ("example.com/app", "example.com", False),
        ("example.com", "example.com/app", True),
        ("example.co", "example.com/app", False),
    ],
)
def test_prefix_matches_whole_segments(prefix: str, name: str, expected: bool) -> None:
    assert prefix_matches(prefix, name) is expected


@pytest.mark.parametrize("bad", ["../etc", "example.com/../x", "/abs", "Example.com", "a//b", ""])
def test_check_prefix_rejects_paths(bad: str) -> None:
    with pytest.raises(TrustError, match="invalid prefix"):
        check_prefix(bad)


def test_default_location() -> None:
    assert default_location({"ACBUILD_TRUST_STORE": "/s"}) == Path("/s")
    assert default_location({"XDG_CONFIG_HOME": "/c"}) == Path("/c/acbuild-py/trustedkeys")
    assert default_location({}) == Path.home() / ".config/acbuild-py/trustedkeys"
    assert TrustStore.locate(Path("/x"), {"ACBUILD_TRUST_STORE": "/s"}).root == Path("/x")


def test_add_uses_rkt_layout(gpgkeys: Keys, tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "tk")
    alice, bob = gpgkeys.fpr["alice"], gpgkeys.fpr["bob"]
    (added,) = store.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/app")
    assert added.path == tmp_path / "tk/prefix.d/example.com/app" / alice
    store.add(gpgkeys.pub["bob"].read_bytes(), prefix=None)
    assert (tmp_path / "tk/root.d" / bob).is_file()
    assert [(k.fingerprint, k.scope) for k in store.all_keys()] == [
        (bob, "root"), (alice, "prefix example.com/app")]
    assert [k.fingerprint for k in store.keys_for("example.com/app/x")] == [bob, alice]
    assert [k.fingerprint for k in store.keys_for("example.com/apple")] == [bob]
    (info,) = scan_keys(added.path.read_bytes())
    assert (info.fingerprint, info.uid) == (alice, "Alice <alice@example.com>")


def test_add_splits_a_file_with_several_keys(gpgkeys: Keys, tmp_path: Path) -> None:
    store = TrustStore(tmp_path)
    data = gpgkeys.pub["alice"].read_bytes() + gpgkeys.pub["bob"].read_bytes()
    added = store.add(data, prefix="example.com")
    expected = sorted([gpgkeys.fpr["alice"], gpgkeys.fpr["bob"]])
    assert sorted(k.fingerprint for k in added) == expected


def test_add_rejects_non_keys(tmp_path: Path) -> None:
    with pytest.raises(TrustError) as e:
        TrustStore(tmp_path).add(b"not a key", prefix=None)
    assert e.value.message == "no OpenPGP public key found in the key data"


def test_remove(gpgkeys: Keys, tmp_path: Path) -> None:
    store = TrustStore(tmp_path)
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/a")
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix=None)
    gone = store.remove(gpgkeys.fpr["alice"].upper())
    assert len(gone) == 2
    assert store.all_keys() == ()
    with pytest.raises(TrustError, match="is not in the trust store"):
        store.remove(gpgkeys.fpr["alice"])


def test_ignores_files_not_named_by_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "root.d").mkdir()
    (tmp_path / "root.d/README").write_text("x")
    assert TrustStore(tmp_path).all_keys() == ()


def test_trust_cli(gpgkeys: Keys, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from acbuild.cli.commands.trust import command

    runner = CliRunner()
    store = str(tmp_path / "tk")
    key = str(gpgkeys.pub["alice"])
    refused = runner.invoke(command, ["--trust-store", store, "--prefix", "example.com/app", key])
    assert isinstance(refused.exception, TrustError)
    assert refused.exception.message == ("refusing to trust keys without confirmation: "
                                         "stdin is not a terminal")
    ok = runner.invoke(command, ["--trust-store", store, "--prefix", "example.com/app", "--yes",
                                 key])
    assert ok.exit_code == 0, ok.output
    assert f"key {gpgkeys.fpr['alice']}  Alice <alice@example.com>" in ok.output
    listed = runner.invoke(command, ["--trust-store", store, "--list"])
    assert listed.output == f"{gpgkeys.fpr['alice']}  prefix example.com/app\n"
    removed = runner.invoke(command, ["--trust-store", store, "--remove", gpgkeys.fpr["alice"]])
    assert removed.exit_code == 0
    assert runner.invoke(command, ["--trust-store", store, "--list"]).output == ""
    usage = runner.invoke(command, ["--trust-store", store, key])
    assert usage.exit_code == 2
