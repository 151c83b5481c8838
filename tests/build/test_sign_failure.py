"""A build asked to sign whose signing fails leaves its output as it was: no unsigned image
that the next job would take for the result, no stale signature, no temporary file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.support.cli import acbuild
from tests.support.gpghelp import _make_key, kill_agent


def test_a_failed_signature_leaves_the_previous_image_and_signature_as_they_were(
        tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="acb-sf-"))  # short: gpg-agent's socket path
    try:
        home.chmod(0o700)
        key = _make_key(home, "locked", passphrase="the right one", algo="rsa2048")
        kill_agent(home)  # nothing cached: the passphrase must be given
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Acfile").write_text("BEGIN scratch\nNAME example.com/signed\n"
                                    "LABEL version=1.0.0\n")
        (tmp_path / "wrong").write_text("not the passphrase\n")
        out = tmp_path / "signed.aci"
        out.write_bytes(b"an older image")
        (tmp_path / "signed.aci.asc").write_bytes(b"its old signature")
        r = acbuild("build", ctx, "-o", out, "--sign", key, "--gpg-home", home,
                    "--passphrase-file", tmp_path / "wrong", "--progress=plain")
        assert r.code == 1, r.stderr
        assert "[4/5] WRITE" in r.stderr and "[5/5] SIGN" in r.stderr  # it got that far
        assert out.read_bytes() == b"an older image"
        assert (tmp_path / "signed.aci.asc").read_bytes() == b"its old signature"
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "ctx", "signed.aci", "signed.aci.asc", "wrong"]
        assert "Traceback" not in r.stderr
    finally:
        kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)
