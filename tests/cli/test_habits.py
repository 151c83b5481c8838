"""What Docker and buildah users type: ./Acfile by default, DIR, -f, hints for docker's
options, did-you-mean, usage errors for malformed --var, unused --var warnings, and a cache
prune that asks before removing everything."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.support.cli import acbuild
from tests.support.terminal import read_until_closed

ACFILE = "BEGIN scratch\nNAME example.com/habit\nLABEL version={{ v }}\n"


def _ctx(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True)
    (ctx / "Acfile").write_text(ACFILE)
    return ctx


def test_no_path_means_the_acfile_here_and_a_directory_means_its_acfile(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    here = acbuild("build", "-q", "--var", "v=1", "-o", tmp_path / "a.aci", cwd=ctx)
    there = acbuild("build", "-q", "--var", "v=1", ctx, "-o", tmp_path / "b.aci", cwd=tmp_path)
    named = acbuild("build", "-q", "--var", "v=1", ctx / "Acfile", "-o", tmp_path / "c.aci")
    assert (here.code, there.code, named.code) == (0, 0, 0), here.stderr + there.stderr
    assert here.stdout == there.stdout == named.stdout
    plan = acbuild("plan", "--var", "v=1", cwd=ctx)
    assert plan.code == 0 and "NAME example.com/habit" in plan.stdout


def test_dash_f_names_the_acfile_and_path_becomes_the_context(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    (ctx / "data.txt").write_text("data\n")
    other = tmp_path / "elsewhere.acfile"
    other.write_text(ACFILE + "COPY data.txt /data.txt\n")
    r = acbuild("build", "-q", "--var", "v=1", "-f", other, ctx, "-o", tmp_path / "x.aci")
    assert r.code == 0, r.stderr
    missing = acbuild("build", "--var", "v=1", "-f", other, tmp_path / "nope")
    assert missing.code == 2 and "PATH is the context directory" in missing.stderr


def test_a_directory_without_an_acfile_is_a_usage_error(tmp_path: Path) -> None:
    r = acbuild("build", cwd=tmp_path)
    assert r.code == 2
    assert "Error: no Acfile in '.' (name one with -f FILE)" in r.stderr


def test_docker_options_get_a_hint(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    r = acbuild("build", "--build-arg", "v=1", cwd=ctx)
    assert r.code == 2 and "--var KEY=VALUE" in r.stderr
    r = acbuild("build", "-t", "habit:1", cwd=ctx)
    assert r.code == 2 and "NAME" in r.stderr and "-o OUT" in r.stderr


def test_misspelled_verbs_and_options_get_did_you_mean() -> None:
    r = acbuild("biuld")
    assert r.code == 2 and "No such command 'biuld'. Did you mean 'build'?" in r.stderr
    r = acbuild("build", "--outptu", "x")
    assert r.code == 2 and "Did you mean '--output'?" in r.stderr


def test_malformed_var_is_a_usage_error(tmp_path: Path) -> None:
    for verb in ("build", "plan", "lint"):
        r = acbuild(verb, "--var", "novalue", cwd=_ctx(tmp_path / verb))
        assert r.code == 2, (verb, r.stderr)
        assert "'novalue' is not KEY=VALUE" in r.stderr
    for bad, why in (("=x", "'' is not a valid variable name"),
                     ("a b=x", "'a b' is not a valid variable name"),
                     ("v=\x1b[2J", "holds the control character")):
        r = acbuild("build", "--var", bad, cwd=_ctx(tmp_path / "names" / str(len(why))))
        assert r.code == 2, (bad, r.code, r.stderr)
        assert "Invalid value for '--var'" in r.stderr and why in r.stderr, r.stderr


def test_unused_var_is_warned_about(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    r = acbuild("build", "--progress=plain", "--var", "v=1", "--var", "color=red",
                "-o", tmp_path / "x.aci", cwd=ctx)
    assert r.code == 0, r.stderr
    assert "warning: --var color is not used by Acfile" in r.stderr
    assert "--var v " not in r.stderr


def _fill_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    ctx = _ctx(tmp_path)
    assert acbuild("build", "-q", "--var", "v=1", "--cache-dir", cache,
                   "-o", tmp_path / "x.aci", cwd=ctx).code == 0
    return cache


def _entries(cache: Path) -> int:
    return int(acbuild("cache", "list", "--cache-dir", cache).stdout.splitlines()[-1].split()[0])


def test_cache_prune_without_a_size_refuses_when_nobody_can_answer(tmp_path: Path) -> None:
    cache = _fill_cache(tmp_path)
    r = acbuild("cache", "prune", "--cache-dir", cache)
    assert r.code == 2 and "pass --all" in r.stderr
    assert _entries(cache) > 0
    assert acbuild("cache", "prune", "--all", "--cache-dir", cache).code == 0
    assert _entries(cache) == 0


def _prune_on_a_terminal(cache: Path, answer: bytes) -> tuple[int, bytes]:
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "acbuild", "cache", "prune", "--cache-dir",
                             str(cache)], stdin=follower, stdout=follower, stderr=follower,
                            env={**os.environ, "CI": "true"})
    os.close(follower)
    seen = b""
    while b"[y/N]" not in seen:
        seen += os.read(leader, 1024)
    os.write(leader, answer + b"\n")
    seen += read_until_closed(leader, proc)
    code = proc.wait(timeout=60)
    os.close(leader)
    return code, seen


def test_cache_prune_without_a_size_asks_on_a_terminal(tmp_path: Path) -> None:
    cache = _fill_cache(tmp_path)
    code, prompt = _prune_on_a_terminal(cache, b"n")
    assert b"Remove every entry of the step cache?" in prompt
    # Declining is an answer, not an interrupt (exit 130, "interrupted").
    assert code == 1 and b"nothing removed: the user declined" in prompt, prompt
    assert b"interrupted" not in prompt and _entries(cache) > 0
    code, _ = _prune_on_a_terminal(cache, b"y")
    assert code == 0 and _entries(cache) == 0
