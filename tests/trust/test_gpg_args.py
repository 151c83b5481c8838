"""Class 4 of the security issue: no user-supplied word reaches gpg as an option.

The attack is real: ``--agent-program=PROG`` makes gpg start PROG as its agent when none runs
(as when listing secret keys in a GnuPG home whose agent was stopped). PROG here only creates
a marker file; every test proves that file was never made.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from acbuild.errors import TrustError
from acbuild.report import NullReporter
from acbuild.trust.sign import sign_image
from tests.support.cli import acbuild
from tests.support.gpghelp import Keys, kill_agent, make_aci

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """A program gpg could be made to run, and the marker it would leave."""
    marker = tmp_path / "PWNED"
    prog = tmp_path / "evil.sh"
    prog.write_text(f"#!/bin/sh\ntouch {marker}\n")
    prog.chmod(0o755)
    conf = tmp_path / "evil.conf"
    conf.write_text(f"agent-program {prog}\nlist-options show-photos\nphoto-viewer {prog}\n")
    return prog, marker


def words(prog: Path) -> list[str]:
    conf = prog.with_name("evil.conf")
    return [f"--agent-program={prog}", f"--options={conf}", f"--photo-viewer={prog}",
            "--list-options=show-photos", f"--exec-path={prog.parent}", f"-o{prog}.out",
            "--", f" --agent-program={prog}"]


def test_option_words_never_reach_gpg(gpgkeys: Keys, tmp_path: Path,
                                      evil: tuple[Path, Path]) -> None:
    prog, marker = evil
    image = make_aci(tmp_path / "app.aci", "example.com/app")
    for word in words(prog):
        kill_agent(gpgkeys.home)  # no agent runs: gpg would start the one it is told to
        with pytest.raises(TrustError, match=r"signing key|must not be empty"):
            sign_image(image, word, gpg_home=gpgkeys.home, reporter=NullReporter())
        assert not marker.exists(), word
        assert not (tmp_path / "evil.sh.out").exists()


def test_sign_line_with_an_option_word_is_an_acfile_error(
        gpgkeys: Keys, tmp_path: Path, evil: tuple[Path, Path]) -> None:
    prog, marker = evil
    acfile = tmp_path / "Acfile"
    acfile.write_text(f"BEGIN scratch\nNAME example.com/app\nSIGN -- --agent-program={prog}\n")
    kill_agent(gpgkeys.home)
    r = acbuild("build", "--no-cache", acfile, "-o", tmp_path / "app.aci",
                "--gpg-home", gpgkeys.home, cwd=tmp_path)
    assert r.code != 0
    assert f"{acfile}:3:9: error: signing key '--agent-program={prog}' starts with '-'" \
        in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not marker.exists()
    assert not (tmp_path / "app.aci").exists()


@pytest.mark.parametrize("verb", ["sign", "build"])
def test_key_options_refuse_option_words(gpgkeys: Keys, tmp_path: Path,
                                         evil: tuple[Path, Path], verb: str) -> None:
    prog, marker = evil
    image = make_aci(tmp_path / "app.aci", "example.com/app")
    acfile = tmp_path / "Acfile"
    acfile.write_text("BEGIN scratch\nNAME example.com/app\n")
    kill_agent(gpgkeys.home)
    args = ((image, f"--key=--agent-program={prog}") if verb == "sign"
            else ("--no-cache", acfile, "-o", tmp_path / "out.aci",
                  f"--sign=--agent-program={prog}"))
    r = acbuild(verb, *args, "--gpg-home", gpgkeys.home, cwd=tmp_path)
    assert r.code == 2, r.stderr
    assert "starts with '-': gpg would read it as an option" in r.stderr
    assert not marker.exists()


def test_keys_are_still_found_by_every_documented_form(gpgkeys: Keys) -> None:
    from acbuild.trust.gpg import find_keys, open_gpg  # new in the fix

    gpg = open_gpg(gpgkeys.home)
    fpr = gpgkeys.fpr["alice"]
    spaced = " ".join(fpr[i:i + 4] for i in range(0, 40, 4)).upper()
    for spec in (fpr, spaced, "0x" + fpr[-16:], fpr[-8:].upper(), "alice@example.com",
                 "<ALICE@example.com>", "Alice", "=Alice <alice@example.com>"):
        found = find_keys(gpg, spec, secret=True)
        assert [k.fingerprint for k in found] == [fpr], spec
    assert find_keys(gpg, "lice@example.com", secret=True) == ()  # e-mail: whole address
    assert find_keys(gpg, "=Alice", secret=True) == ()


def test_control_characters_and_nul_passphrase(gpgkeys: Keys, tmp_path: Path) -> None:
    image = make_aci(tmp_path / "app.aci", "example.com/app")
    with pytest.raises(TrustError, match="control character"):
        sign_image(image, "alice@example.com\n--agent-program=/x", gpg_home=gpgkeys.home,
                   reporter=NullReporter())
    with pytest.raises(TrustError, match="single line without NUL"):
        sign_image(image, "alice@example.com", gpg_home=gpgkeys.home, passphrase="a\0b",
                   reporter=NullReporter())


def test_gpg_gets_absolute_file_names(gpgkeys: Keys, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A relative image name that looks like an option is passed as an absolute path.
    from acbuild.trust.truststore import TrustStore
    from acbuild.trust.verify import verify_image

    monkeypatch.chdir(tmp_path)
    image = make_aci(tmp_path / "--output=x", "example.com/app")
    sign_image(image, "alice@example.com", gpg_home=gpgkeys.home, reporter=NullReporter())
    store = TrustStore(tmp_path / "trust")
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/app")
    result = verify_image(Path("--output=x"), store)
    assert result.fingerprint == gpgkeys.fpr["alice"]
    assert not os.path.exists(tmp_path / "x")
