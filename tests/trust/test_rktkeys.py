"""Keys rkt cannot read: an error for SIGN (at the line, before any step runs), a warning for
`trust`. tests/rkt/test_rkt_keys.py shows the real rkt refusing the same kinds of keys."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from acbuild.errors import TrustError
from acbuild.trust.rktkeys import check_signing_key, rkt_problems
from tests.support.cli import acbuild
from tests.support.gpghelp import Keys, kill_agent

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys


def test_rsa_key_is_fine_eddsa_is_not(gpgkeys: Keys) -> None:
    assert check_signing_key("alice@example.com", gpgkeys.home).fingerprint == \
        gpgkeys.fpr["alice"]
    with pytest.raises(TrustError, match=r"rkt cannot verify signatures by key .*: primary key "
                                         r"is EdDSA \(ed25519\): rkt reads RSA, DSA"):
        check_signing_key("bob@example.com", gpgkeys.home)
    with pytest.raises(TrustError, match=r"no secret key 'nobody@example\.com'"):
        check_signing_key("nobody@example.com", gpgkeys.home)
    with pytest.raises(TrustError, match="expired"):
        check_signing_key(gpgkeys.fpr["old"], gpgkeys.home)


def test_subkey_rkt_cannot_read_is_reported(gpgkeys: Keys, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    request.addfinalizer(lambda: kill_agent(home))  # leave no gpg-agent behind
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "Sub <sub@example.com>", "rsa2048", "sign",
                    "never"], check=True, capture_output=True)
    out = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True,
                         capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))
    subprocess.run([*gpg, "--quick-add-key", fpr, "cv25519", "encr"], check=True,
                   capture_output=True)
    with pytest.raises(TrustError, match=r"subkey \w+ is ECDH \(cv25519\)"):
        check_signing_key(fpr, home)
    public = subprocess.run([*gpg, "--armor", "--export", fpr], check=True,
                            capture_output=True).stdout
    ((found, why),) = rkt_problems(public)
    assert found == fpr.lower() and "ECDH (cv25519)" in why
    assert rkt_problems(gpgkeys.pub["alice"].read_bytes()) == ()


def test_build_refuses_an_eddsa_sign_key_at_the_line(hello_context: Path, gpgkeys: Keys,
                                                     tmp_path: Path) -> None:
    acfile = hello_context / "Acfile"
    acfile.write_text(acfile.read_text() + "RUN /bin/hello\nSIGN bob@example.com\n")
    lines = acfile.read_text().splitlines()
    r = acbuild("build", "--no-cache", acfile, "-o", tmp_path / "x.aci",
                "--gpg-home", gpgkeys.home)
    assert r.code == 1, r.stderr
    assert f"{acfile}:{len(lines)}:1: error: rkt cannot verify signatures by key " \
        f"{gpgkeys.fpr['bob']}" in r.stderr
    assert "hint: make an RSA key" in r.stderr
    # Before any step: the RUN (which would fail on a scratch image) never ran.
    assert "RUN" not in r.stderr.split("error:")[0] and not (tmp_path / "x.aci").exists()
    r = acbuild("build", "--no-cache", acfile, "-o", tmp_path / "x.aci", "--gpg-home",
                tmp_path / "nowhere")
    assert r.code == 1 and "error: GnuPG home" in r.stderr


def test_build_with_rsa_sign_key_and_cli_sign_key(hello_context: Path, gpgkeys: Keys,
                                                  tmp_path: Path) -> None:
    acfile = hello_context / "Acfile"
    acfile.write_text(acfile.read_text() + "SIGN alice@example.com\n")
    r = acbuild("build", acfile, "-o", tmp_path / "ok.aci", "--gpg-home", gpgkeys.home)
    assert r.code == 0, r.stderr
    assert (tmp_path / "ok.aci.asc").is_file()
    plain = hello_context / "Plain"
    plain.write_text((hello_context / "Acfile").read_text().replace(
        "SIGN alice@example.com\n", ""))
    r = acbuild("build", plain, "-o", tmp_path / "no.aci", "--gpg-home", gpgkeys.home,
                "--sign", "bob@example.com")
    assert r.code == 1 and "error: --sign bob@example.com: rkt cannot verify" in r.stderr


def test_trust_accepts_eddsa_with_a_warning(gpgkeys: Keys, tmp_path: Path) -> None:
    r = acbuild("trust", "--trust-store", tmp_path / "tk", "--prefix", "example.com/app",
                "--yes", gpgkeys.pub["bob"])
    assert r.code == 0, r.stderr
    assert f"warning: rkt cannot use key {gpgkeys.fpr['bob']}: primary key is EdDSA " \
        "(ed25519)" in r.stderr
    r = acbuild("trust", "--trust-store", tmp_path / "tk", "--prefix", "example.com/app",
                "--yes", gpgkeys.pub["alice"])
    assert r.code == 0 and "warning" not in r.stderr
