"""Tests for acbuild.trust.sign: real gpg, throwaway keys."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from acbuild.errors import TrustError
from acbuild.report import NullReporter
from acbuild.trust.sign import read_passphrase, remove_stale_signature, sign_image, signature_path
from tests.support.gpghelp import PASSPHRASE, Keys, make_aci


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_aci(tmp_path / "app.aci", "example.com/app", {"version": "1.0"})


def gpg_verify(home: Path, image: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--verify", str(signature_path(image)),
         str(image)], capture_output=True, check=False)


def test_sign_writes_armored_detached_signature_gpg_accepts(gpgkeys: Keys, image: Path) -> None:
    result = sign_image(image, "alice@example.com", gpg_home=gpgkeys.home, reporter=NullReporter())
    assert result.signature == image.with_name("app.aci.asc")
    assert result.fingerprint == gpgkeys.fpr["alice"]
    assert result.uid == "Alice <alice@example.com>"
    assert result.signature.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    assert gpg_verify(gpgkeys.home, image).returncode == 0
    image.write_bytes(image.read_bytes() + b"\0")
    assert gpg_verify(gpgkeys.home, image).returncode != 0


def test_sign_by_fingerprint_with_passphrase(gpgkeys: Keys, image: Path) -> None:
    result = sign_image(image, gpgkeys.fpr["carol"], gpg_home=gpgkeys.home,
                        passphrase=PASSPHRASE, reporter=NullReporter())
    assert result.fingerprint == gpgkeys.fpr["carol"]
    assert gpg_verify(gpgkeys.home, image).returncode == 0


def test_wrong_passphrase(gpgkeys: Keys, image: Path) -> None:
    with pytest.raises(TrustError) as e:
        sign_image(image, "carol@example.com", gpg_home=gpgkeys.home, passphrase="nope",
                   reporter=NullReporter())
    assert e.value.message == (f"wrong passphrase for key {gpgkeys.fpr['carol']} "
                               "(Carol <carol@example.com>)")
    assert not signature_path(image).exists()


def test_unknown_key(gpgkeys: Keys, image: Path) -> None:
    with pytest.raises(TrustError) as e:
        sign_image(image, "nobody@example.com", gpg_home=gpgkeys.home, reporter=NullReporter())
    assert e.value.message == f"no secret key 'nobody@example.com' in GnuPG home {gpgkeys.home}"


def test_expired_key(gpgkeys: Keys, image: Path) -> None:
    with pytest.raises(TrustError) as e:
        sign_image(image, "old@example.com", gpg_home=gpgkeys.home, reporter=NullReporter())
    assert e.value.message == (f"cannot sign with key {gpgkeys.fpr['old']} "
                               "(Old <old@example.com>): it has expired")


def test_revoked_key(gpgkeys: Keys, image: Path) -> None:
    with pytest.raises(TrustError) as e:
        sign_image(image, "rev@example.com", gpg_home=gpgkeys.revoked_home,
                   reporter=NullReporter())
    assert e.value.message == (f"cannot sign with key {gpgkeys.fpr['rev']} "
                               "(Rev <rev@example.com>): it is revoked")


def test_failed_signing_leaves_no_stale_signature(gpgkeys: Keys, image: Path) -> None:
    signature_path(image).write_text("old signature")
    with pytest.raises(TrustError):
        sign_image(image, "carol@example.com", gpg_home=gpgkeys.home, passphrase="nope",
                   reporter=NullReporter())
    assert sorted(p.name for p in image.parent.iterdir()) == ["app.aci"]


def test_remove_stale_signature(image: Path) -> None:
    signature_path(image).write_text("x")
    remove_stale_signature(image)
    remove_stale_signature(image)
    assert not signature_path(image).exists()


def test_missing_gpg_home(image: Path, tmp_path: Path) -> None:
    with pytest.raises(TrustError, match=r"GnuPG home .* does not exist"):
        sign_image(image, "a", gpg_home=tmp_path / "none", reporter=NullReporter())


def test_gpg_missing(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("acbuild.trust.gpg.GPG_BINARY", "gpg-not-installed-here")
    with pytest.raises(TrustError) as e:
        sign_image(image, "a", reporter=NullReporter())
    assert e.value.message == "gpg not found: signing and verification need GnuPG"


def test_read_passphrase(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("secret\nignored\n")
    assert read_passphrase(f, {"ACBUILD_PASSPHRASE": "env"}) == "secret"
    assert read_passphrase(None, {"ACBUILD_PASSPHRASE": "env"}) == "env"
    assert read_passphrase(None, {}) is None
    with pytest.raises(TrustError, match="cannot read passphrase file"):
        read_passphrase(tmp_path / "missing", {})


def test_signing_reports_a_byte_bar_from_the_callers_thread(gpgkeys: Keys, image: Path) -> None:
    """Signing is a step of its own with a bar; reporters tag a transfer with the step of
    the thread that reports it, so the bar comes from the caller's thread, not gpg's."""
    import threading

    class Bars(NullReporter):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[str, int, int | None, int]] = []

        def progress(self, what: str, done: int, total: int | None) -> None:
            self.seen.append((what, done, total, threading.get_ident()))

    bars = Bars()
    sign_image(image, "alice@example.com", gpg_home=gpgkeys.home, reporter=bars)
    size = image.stat().st_size
    assert bars.seen and bars.seen[-1][:3] == ("sign", size, size)
    assert {thread for *_, thread in bars.seen} == {threading.get_ident()}
    assert all(what == "sign" and total == size and done <= size
               for what, done, total, _ in bars.seen)
