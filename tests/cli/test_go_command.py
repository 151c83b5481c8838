"""The go verb's wiring (signing, outputs, one line a image) and run's --set-env."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from acbuild.sandbox.sandbox import sandbox_available
from tests.support.cli import acbuild
from tests.support.gohelp import MAIN, go_environ, go_missing, write_module
from tests.support.gpghelp import Keys

pytestmark = pytest.mark.skipif(go_missing() is not None, reason=str(go_missing()))


def test_go_is_a_verb() -> None:
    r = acbuild("--help")
    assert r.code == 0 and "\n  go " in r.stdout
    r = acbuild("go", "--help")
    assert "--print-acfile" in r.stdout and "--bin NAME" in r.stdout


def test_signed_image_and_outputs(tmp_path: Path, gpgkeys: Keys) -> None:
    env = go_environ()
    module = write_module(tmp_path / "m", "example.com/signed", {"main.go": MAIN % "hi"})
    image = tmp_path / "s.aci"
    r = acbuild("go", module, "-o", image, "--version", "1.0.0", "--sign",
                gpgkeys.fpr["alice"], "--gpg-home", gpgkeys.home, env=env)
    assert r.code == 0, r.stderr
    assert (tmp_path / "s.aci.asc").is_file()
    ok = subprocess.run(["gpg", "--homedir", str(gpgkeys.home), "--verify",
                         str(tmp_path / "s.aci.asc"), str(image)], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    # The default output is NAME-VERSION.aci in the working directory, as for build.
    r = acbuild("go", module, "--version", "1.0.0", cwd=tmp_path, env=env)
    assert r.code == 0, r.stderr
    assert (tmp_path / "signed-1.0.0.aci").is_file()
    # Several images want a directory for -o; a file there is a clear error.
    write_module(tmp_path / "two", "example.com/two",
                 {"a/main.go": MAIN % "a", "b/main.go": MAIN % "b"})
    r = acbuild("go", tmp_path / "two", "--version", "1", "-o", image, env=env)
    assert r.code == 1 and "2 images need a directory there" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = acbuild("go", tmp_path / "two", "--bin", "c", env=env)
    assert r.code == 1 and "--bin c: no main package" in r.stderr and "a, b" in r.stderr


@pytest.mark.skipif(sandbox_available() is not None or shutil.which("busybox") is None,
                    reason="needs the sandbox and busybox-static")
def test_run_set_env(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy2(shutil.which("busybox") or "", ctx / "busybox")
    (ctx / "Acfile").write_text("BEGIN scratch\nNAME example.com/env\nCOPY busybox /bin/sh\n"
                                "ENV GREETING=image\nEXEC /bin/sh -c 'echo $GREETING $PORT'\n")
    image = tmp_path / "env.aci"
    assert acbuild("build", ctx / "Acfile", "-o", image).code == 0
    r = acbuild("run", "--no-stdin", "--set-env=PORT=9", "--set-env", "GREETING=set", image)
    assert (r.code, r.stdout) == (0, "set 9\n"), r.stderr
    r = acbuild("run", "--no-stdin", "--set-env=PORT", image)
    assert r.code == 1 and "invalid --set-env 'PORT': expected NAME=VALUE" in r.stderr
