"""Tests for acbuild.trust.verify: real signatures checked in an isolated keyring."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.errors import TrustError
from acbuild.report import NullReporter
from acbuild.trust.sign import sign_image
from acbuild.trust.truststore import TrustStore
from acbuild.trust.verify import verify_image
from tests.support.gpghelp import Keys, make_aci, sign_at

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys


def refusal(image: Path, store: TrustStore) -> TrustError:
    """What verify_image says when it refuses ``image`` (the test fails if it does not)."""
    with pytest.raises(TrustError) as e:
        verify_image(image, store)
    return e.value


@pytest.fixture
def store(tmp_path: Path) -> TrustStore:
    return TrustStore(tmp_path / "trust")


def signed(gpgkeys: Keys, tmp_path: Path, key: str = "alice", name: str = "example.com/app",
           home: Path | None = None) -> Path:
    image = make_aci(tmp_path / "app.aci", name, {"version": "1.0"})
    sign_image(image, gpgkeys.fpr[key], gpg_home=home or gpgkeys.home, reporter=NullReporter())
    return image


def test_accepts_key_trusted_for_prefix(gpgkeys: Keys, tmp_path: Path, store: TrustStore) -> None:
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/app")
    image = signed(gpgkeys, tmp_path, name="example.com/app/sub")
    result = verify_image(image, store)
    assert result.name == "example.com/app/sub"
    assert result.fingerprint == gpgkeys.fpr["alice"]
    assert result.signer == "Alice <alice@example.com>"
    assert result.trusted_as == "prefix example.com/app"


def test_accepts_root_key(gpgkeys: Keys, tmp_path: Path, store: TrustStore) -> None:
    store.add(gpgkeys.pub["bob"].read_bytes(), prefix=None)
    assert verify_image(signed(gpgkeys, tmp_path, key="bob"), store).trusted_as == "root"


def test_rejects_one_changed_byte(gpgkeys: Keys, tmp_path: Path, store: TrustStore) -> None:
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/app")
    image = signed(gpgkeys, tmp_path)
    data = bytearray(image.read_bytes())
    data[-1] ^= 1  # tar padding: the manifest still reads the same
    image.write_bytes(bytes(data))
    assert refusal(image, store).message == (
        f"bad signature on {image}: the image or its signature was changed after signing")


def test_rejects_key_trusted_for_another_prefix(gpgkeys: Keys, tmp_path: Path,
                                                store: TrustStore) -> None:
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/app")
    store.add(gpgkeys.pub["bob"].read_bytes(), prefix="example.com/apple")
    image = signed(gpgkeys, tmp_path, key="alice", name="example.com/apple")
    e = refusal(image, store)
    assert e.message == (f"{image} is signed by key {gpgkeys.fpr['alice']}, which is not "
                         "trusted for example.com/apple")
    assert e.hint == "that key is trusted only for prefix example.com/app"


def test_no_keys_for_name(gpgkeys: Keys, tmp_path: Path, store: TrustStore) -> None:
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/app")
    image = signed(gpgkeys, tmp_path, name="example.com/apple")
    assert refusal(image, store).message == (
        f"no keys are trusted for example.com/apple in {store.root}")


def test_no_signature(tmp_path: Path, store: TrustStore) -> None:
    image = make_aci(tmp_path / "app.aci", "example.com/app")
    assert refusal(image, store).message == f"{image} is not signed: {image}.asc does not exist"


def test_garbage_signature(gpgkeys: Keys, tmp_path: Path, store: TrustStore) -> None:
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/app")
    image = make_aci(tmp_path / "app.aci", "example.com/app")
    Path(f"{image}.asc").write_text("hello")
    assert refusal(image, store).message == (
        f"cannot verify {image}: {image}.asc holds no OpenPGP signature")


def test_expired_key(gpgkeys: Keys, tmp_path: Path, store: TrustStore) -> None:
    store.add(gpgkeys.pub["old"].read_bytes(), prefix="example.com")
    image = make_aci(tmp_path / "app.aci", "example.com/app")
    sign_at(gpgkeys.home, gpgkeys.fpr["old"], image, "20200101T010000")
    assert refusal(image, store).message == (f"{image} is signed by key {gpgkeys.fpr['old']} "
                                             "(Old <old@example.com>), which has expired")


def test_revoked_key(gpgkeys: Keys, tmp_path: Path, store: TrustStore) -> None:
    image = signed(gpgkeys, tmp_path, key="rev")
    store.add(gpgkeys.pub["rev"].read_bytes(), prefix="example.com")
    assert verify_image(image, store).fingerprint == gpgkeys.fpr["rev"]
    store.add(gpgkeys.revoked_pub.read_bytes(), prefix="example.com")  # the publisher revoked it
    assert refusal(image, store).message == (f"{image} is signed by key {gpgkeys.fpr['rev']} "
                                             "(Rev <rev@example.com>), which has been revoked")


def test_explicit_signature_and_mislabelled_key_file(gpgkeys: Keys, tmp_path: Path,
                                                     store: TrustStore) -> None:
    image = signed(gpgkeys, tmp_path)
    moved = tmp_path / "sig.asc"
    Path(f"{image}.asc").rename(moved)
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com")
    assert verify_image(image, store, signature=moved).signature == moved
    # A key file whose name is not the key it holds is refused, as rkt does.
    (key,) = store.all_keys()
    key.path.write_bytes(gpgkeys.pub["bob"].read_bytes())
    with pytest.raises(TrustError, match="not the key its name says"):
        verify_image(image, store, signature=moved)


def test_sign_and_verify_cli(gpgkeys: Keys, tmp_path: Path, store: TrustStore) -> None:
    from click.testing import CliRunner

    from acbuild.cli.commands.sign import command as sign_command
    from acbuild.cli.commands.verify import command as verify_command

    image = make_aci(tmp_path / "app.aci", "example.com/app")
    runner = CliRunner()
    signed_out = runner.invoke(sign_command, [str(image), "--key", "bob@example.com",
                                              "--gpg-home", str(gpgkeys.home)])
    assert signed_out.exit_code == 0, signed_out.output
    store.add(gpgkeys.pub["bob"].read_bytes(), prefix="example.com")
    out = runner.invoke(verify_command, [str(image), "--trust-store", str(store.root)])
    assert out.output == (f"{image}: good signature for example.com/app by Bob <bob@example.com> "
                          f"({gpgkeys.fpr['bob']}), trusted as prefix example.com\n")
