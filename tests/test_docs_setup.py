"""The set-up a new user copies: README.md's two commands and docs/ci.md's CI recipes.

README: the ``## Set up`` section holds exactly two ```sh blocks, found by the same regular
expressions the project's before-stop hook uses; command 1 runs verbatim in a fresh copy of
the checkout under ``env -i`` with a new HOME (it runs apt-get, so only as root); command 2 is
``bash .ci/run``, which is what CI runs, so this suite is its output.

docs/ci.md: each ```yaml recipe's shell steps run in order in a fresh copy of the checkout,
with a new HOME and the system PATH, as a runner would run them. The runner's own parts are
played here: the checkout is the copy, the job's Python (``actions/setup-python``, GitLab's
``image: python:…``) is a new venv first on PATH, the secrets are a throwaway RSA key with a
passphrase, a first run has no cache, and the artifacts must exist at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from glob import glob
from pathlib import Path
from typing import Any

import pytest
import yaml

from acbuild.sandbox.sandbox import sandbox_available
from tests.conftest import REPO
from tests.support.docrun import blocks, checkout_copy, clean_env

README = REPO / "README.md"
CI_DOC = REPO / "docs" / "ci.md"
# The hook's extraction (/work/shared/hooks/before-stop), verbatim.
_SECTION = re.compile(r"^##+ *(Set ?up|Setup|Install|Quick ?start)[^\n]*\n(.*?)(?=^##? |\Z)",
                      re.M | re.S | re.I)
_BLOCKS = re.compile(r"```(?:\w+)?\n(.*?)```|((?:^(?: {4}|\t)[^\n]*\n?)+)", re.M | re.S)
README_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
PASSPHRASE = "ci secret"


def setup_commands() -> list[str]:
    """README's set-up commands as the hook sees them: each block one ``&&`` chain."""
    m = _SECTION.search(README.read_text())
    assert m, "README has no 'Set up' section"
    return [c for a, b in _BLOCKS.findall(m[2])
            if (c := " && ".join(line.strip().removeprefix("$ ")
                                 for line in (a or b).splitlines()
                                 if line.strip() and not line.strip().startswith("#")))]


def test_readme_set_up_is_two_sh_blocks() -> None:
    m = _SECTION.search(README.read_text())
    assert m and m[1] == "Set up"
    fenced, indented = blocks(m[2])
    assert not indented and [b.kind for b in fenced] == ["sh", "sh"]
    assert not any(line.rstrip().endswith("\\") for b in fenced for line in b.body.splitlines())
    commands = setup_commands()
    assert len(commands) == 2, commands
    assert commands[0].startswith("apt-get update && apt-get install -y python3 python3-venv ")
    assert commands[1] == "bash .ci/run"
    ci = (REPO / ".ci" / "run").read_text()
    assert "env -i " in ci and "lint-imports" in ci


@pytest.mark.skipif(os.geteuid() != 0, reason="README command 1 runs apt-get, as root")
def test_readme_command_1_in_a_fresh_clone(tmp_path: Path) -> None:
    work = checkout_copy(tmp_path / "clone")
    home = tmp_path / "home"
    home.mkdir()
    r = subprocess.run(["env", "-i", README_PATH, f"HOME={home}", "bash", "-c",
                        setup_commands()[0]], cwd=work, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.rstrip().endswith("\nhello.aci: valid"), r.stdout[-2000:]
    assert re.search(r"^sha512-[0-9a-f]{128}$", r.stdout, re.M)


@pytest.fixture(scope="module")
def secrets() -> Iterator[dict[str, str]]:
    """What the CI system's secret store holds: an armored RSA secret key with a passphrase."""
    home = Path(tempfile.mkdtemp(prefix="acb-ci-"))  # short: gpg-agent's socket lives there
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", PASSPHRASE]
    try:
        subprocess.run([*gpg, "--quick-gen-key", "CI Signer <ci@example.com>", "rsa2048",
                        "sign", "never"], check=True, capture_output=True)
        key = subprocess.run([*gpg, "--armor", "--export-secret-keys", "ci@example.com"],
                             check=True, capture_output=True, text=True).stdout
        yield {"SIGNING_KEY": key, "SIGNING_PASSPHRASE": PASSPHRASE,
               "ACBUILD_PASSPHRASE": PASSPHRASE}
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def _recipes() -> list[dict[str, Any]]:
    return [yaml.safe_load(b.body) for b in blocks(CI_DOC.read_text())[0] if b.kind == "yaml"]


class Runner:
    """One job on a fresh runner: a copy of the checkout, a new HOME, the system PATH."""

    def __init__(self, tmp: Path) -> None:
        self.work = checkout_copy(tmp / "checkout")
        # Short: the recipes' gpg-agent puts its sockets in ~/.gnupg, and they must fit in
        # sun_path (107 bytes); below pytest -n's per-worker directories they did not.
        self.home = Path(tempfile.mkdtemp(prefix="acb-ci-home-"))
        self.python = tmp / "python"
        self.env = clean_env(self.home)

    def setup_python(self) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(self.python)], check=True)
        self.env["PATH"] = f"{self.python / 'bin'}{os.pathsep}{self.env['PATH']}"

    def shell(self, script: str, env: dict[str, str]) -> None:
        r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                           cwd=self.work, env={**self.env, **env}, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, f"step failed:\n{script}\n{r.stdout}{r.stderr}"[-4000:]

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


def _expand(value: str, env: dict[str, str], secrets: dict[str, str]) -> str:
    """A runner's substitutions: GitHub's ``${{ secrets.X }}``, GitLab's ``$VAR``."""
    value = re.sub(r"\$\{\{\s*secrets\.(\w+)\s*\}\}", lambda m: secrets[m[1]], value)
    assert "${{" not in value, f"an expression this test does not play: {value}"
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env[m[1] or m[2]], value)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    if (reason := sandbox_available()) is not None:
        pytest.skip(f"no sandbox: {reason}")
    r = Runner(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_ci_doc_has_both_recipes() -> None:
    github, gitlab = _recipes()
    assert "jobs" in github and "script" in gitlab["build"]
    text = CI_DOC.read_text()
    assert "pip install acbuild-py" not in text  # not on PyPI


def test_github_actions_recipe(runner: Runner, secrets: dict[str, str]) -> None:
    github = _recipes()[0]
    (job,) = github["jobs"].values()
    output = runner.work.parent / "github_output"
    output.touch()
    for step in job["steps"]:
        uses = step.get("uses", "").split("@")[0]
        if "run" in step:
            env = {k: _expand(str(v), runner.env, secrets) for k, v in step.get("env", {}).items()}
            assert "${{" not in step["run"], step["run"]
            runner.shell(step["run"], {**env, "GITHUB_OUTPUT": str(output)})
        elif uses == "actions/setup-python":
            runner.setup_python()
        elif uses == "actions/upload-artifact":
            assert glob(str(runner.work / step["with"]["path"])), step
        else:  # the checkout is the copy; a first run has no cache to restore
            assert uses in ("actions/checkout", "actions/cache"), f"unknown step {step}"
    assert re.fullmatch(r"image=sha512-[0-9a-f]{128}\n", output.read_text())
    assert (runner.work / "app.aci.asc").is_file()


def test_gitlab_recipe(runner: Runner, secrets: dict[str, str]) -> None:
    gitlab = _recipes()[1]
    assert gitlab["image"].startswith("python:")
    runner.setup_python()
    env = {"CI_PROJECT_DIR": str(runner.work), "SIGNING_KEY": secrets["SIGNING_KEY"],
           "ACBUILD_PASSPHRASE": secrets["ACBUILD_PASSPHRASE"]}
    for k, v in gitlab.get("variables", {}).items():
        env[k] = _expand(str(v), {**runner.env, **env}, secrets)
    runner.shell("\n".join(gitlab["build"]["script"]), env)
    for path in gitlab["build"]["artifacts"]["paths"]:
        assert (runner.work / path).exists(), path
    assert (runner.work / ".cache" / "acbuild-py").is_dir()  # where the cache: entry points
