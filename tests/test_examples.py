"""Every example under examples/Acfiles builds, passes `actool validate`, and runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from acbuild.sandbox.sandbox import sandbox_available
from tests.conftest import EXAMPLES
from tests.support.busybox import BUSYBOX, busybox_available
from tests.support.cli import acbuild, actool_validate

_reason = sandbox_available() if busybox_available() else "busybox-static is not installed"
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"no sandbox: {_reason}")

# Example -> where its image goes, relative to the copied examples directory. Order matters:
# busybox-app begins from ./busybox.aci beside its Acfile.
OUTPUTS = {
    "hello": "hello.aci",
    "busybox": "busybox-app/busybox.aci",
    "busybox-app": "busybox-app.aci",
}


@pytest.fixture
def examples(tmp_path: Path, hello_binary: Path) -> Path:
    """A copy of examples/Acfiles with what each README says to put in the context."""
    copy = tmp_path / "Acfiles"
    shutil.copytree(EXAMPLES, copy)
    shutil.copy2(hello_binary, copy / "hello" / "hello")
    shutil.copy2(BUSYBOX, copy / "busybox" / "busybox")
    return copy


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()) == sorted(OUTPUTS)


def test_examples_build_validate_and_run(examples: Path, tmp_path: Path) -> None:
    for name, output in OUTPUTS.items():
        out = examples / output
        r = acbuild("build", "--no-cache", examples / name / "Acfile", "-o", out)
        assert r.code == 0, f"{name}: {r.stderr}"
        actool_validate(out)
        assert acbuild("validate", out).code == 0
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = acbuild("run", "--no-stdin", examples / "busybox-app.aci", env=env)
    assert (r.code, r.stdout) == (0, (
        "Welcome to busybox-app\n"
        "Hello from busybox-app, app in /home/app: written by app\n"
    )), r.stderr
    r = acbuild("run", "--no-stdin", examples / "hello.aci", env=env)
    assert r.code == 0, r.stderr
    assert "Hello AppC" in r.stdout
    r = acbuild("run", "--no-stdin", examples / "busybox-app" / "busybox.aci", "--", "-c",
                "ls /bin | wc -l", env=env)
    assert r.code == 0 and int(r.stdout) > 100
