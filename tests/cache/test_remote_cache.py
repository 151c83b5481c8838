"""The step cache shared through the real registry: builds with separate local caches hit each
other's steps (RUN steps not run again), shown CACHED in plain, json and tty logs; a corrupt,
missing or unreachable remote entry is a warning and a rebuild, never a failed build."""

from __future__ import annotations

import base64
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import REPO
from tests.support.busybox import make_busybox_rootfs
from tests.support.cli import Result, acbuild
from tests.support.registry import Registry, empty_registry, skip_without_registry, start_registry
from tests.support.sandboxrun import needs_sandbox
from tests.support.terminal import run_in_terminal

SCHEMA = jsonschema.Draft202012Validator(
    json.loads((REPO / "docs" / "logs.schema.json").read_text()))
# The RUN writes the time to the nanosecond: an image with the same digest did not run it.
ACFILE = """\
BEGIN ./bb
NAME example.com/shared
RUN /bin/sh -c 'date +%s%N > /stamp; echo ran-the-first-run'
LABEL version=1.0
RUN /bin/sh -c 'echo ran-the-second-run; cat /stamp > /copy'
EXEC /bin/sh
"""
STEPS = 7  # six instructions and WRITE


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    yield from empty_registry(tmp_path, "http")


@pytest.fixture
def context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    make_busybox_rootfs(ctx / "bb")
    (ctx / "Acfile").write_text(ACFILE)
    return ctx


def build(ctx: Path, cache: Path, out: Path, *args: str | Path,
          progress: str = "plain", env: dict[str, str] | None = None) -> Result:
    """A build with its own local cache (as on another machine)."""
    r = acbuild("build", ctx / "Acfile", "--format", "oci", "-o", out, f"--progress={progress}",
                *args, env={"XDG_CACHE_HOME": str(cache), **(env or {})})
    assert r.code == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


def cache_args(reg: Registry, *, to: str | None = None, frm: tuple[str, ...] = ()) -> list[str]:
    args = ["--insecure-registry", reg.host]
    if to:
        args += ["--cache-to", f"registry://{reg.host}/{to}"]
    for repo in frm:
        args += ["--cache-from", f"registry://{reg.host}/{repo}"]
    return args


def layer_blobs(reg: Registry) -> list[Path]:
    """The data files of the gzip blobs in the registry's storage (the step trees)."""
    blobs = reg.storage / "docker/registry/v2/blobs/sha256"
    return [p for p in blobs.rglob("data") if p.read_bytes()[:2] == b"\x1f\x8b"]


@needs_sandbox
def test_separate_caches_share_run_steps_through_the_registry(
        registry: Registry, context: Path, tmp_path: Path) -> None:
    first = build(context, tmp_path / "c1", tmp_path / "out1",
                  *cache_args(registry, to="ci/cache"))
    assert "| ran-the-first-run" in first.stderr
    assert (f"cache exported to registry://{registry.host}/ci/cache: steps pushed 6, "
            "there already 0") in first.stderr
    second = build(context, tmp_path / "c2", tmp_path / "out2",
                   *cache_args(registry, frm=("ci/cache",)))
    assert "| ran-the-" not in second.stderr  # neither RUN ran (no output line)
    for n in range(1, STEPS):
        assert f"[{n}/{STEPS}] CACHED" in second.stderr.splitlines()
    assert f"step 6 imported from registry://{registry.host}/ci/cache" in second.stderr
    assert second.stdout == first.stdout  # the same image: /stamp is the first build's
    assert (tmp_path / "out2/index.json").read_bytes() == \
        (tmp_path / "out1/index.json").read_bytes()
    # json: the events name the registry as the source and fit the schema
    third = build(context, tmp_path / "c3", tmp_path / "out3",
                  *cache_args(registry, frm=("ci/other", "ci/cache")), progress="json")
    events = [json.loads(line) for line in third.stderr.splitlines()]
    for event in events:
        assert SCHEMA.is_valid(event), event
    finished = [e for e in events if e["event"] == "step-finished"]
    assert [e["cached"] for e in finished] == [True] * (STEPS - 1) + [False]
    assert {e.get("source") for e in finished[:-1]} == {f"registry://{registry.host}/ci/cache"}
    # a later build on that machine finds the steps locally
    local = build(context, tmp_path / "c3", tmp_path / "out4", progress="json")
    assert {json.loads(line).get("source") for line in local.stderr.splitlines()
            if '"step-finished"' in line} == {"local", None}


@needs_sandbox
def test_an_import_is_listed_as_one_and_can_be_pruned_alone(
        registry: Registry, context: Path, tmp_path: Path) -> None:
    """What a --cache-from gave stays in the local cache after the option is gone, and so
    does what later builds stored on top of it: both are listed with the import's origin,
    and `cache prune --imported` removes them and nothing else."""
    build(context, tmp_path / "c1", tmp_path / "out1", *cache_args(registry, to="ci/cache"))
    build(context, tmp_path / "c2", tmp_path / "out2", *cache_args(registry, frm=("ci/cache",)))
    env = {"XDG_CACHE_HOME": str(tmp_path / "c2")}
    origin = f"registry://{registry.host}/ci/cache"
    listed = acbuild("cache", "list", env=env)
    assert listed.code == 0, listed.stderr
    imported = [line for line in listed.stdout.splitlines()
                if line.endswith(f"imported from {origin}")]
    assert len(imported) == 1, listed.stdout  # step 6, the last cached one: the one fetched
    # A later build, without --cache-from, goes on from the import: a RUN more, and the
    # image (an ACI, which the cache keeps whole)
    (context / "Acfile").write_text(ACFILE + "RUN /bin/sh -c 'echo ran-the-third-run'\n")
    later = acbuild("build", context / "Acfile", "-o", tmp_path / "later.aci",
                    "--progress=plain", env=env)
    assert later.code == 0, later.stderr
    assert "| ran-the-third-run" in later.stderr and "| ran-the-first-run" not in later.stderr
    listed = acbuild("cache", "list", env=env).stdout
    built_on = [line for line in listed.splitlines()
                if line.endswith(f"built on an import from {origin}")]
    assert {line.split()[0] for line in built_on} == {"step", "image"}, listed
    pruned = acbuild("cache", "prune", "--imported", env=env)
    assert pruned.code == 0, pruned.stderr
    assert pruned.stdout.startswith(f"removed {len(imported) + len(built_on)} entries")
    assert origin not in acbuild("cache", "list", env=env).stdout
    again = acbuild("build", context / "Acfile", "-o", tmp_path / "again.aci",
                    "--progress=plain", env=env)  # no --cache-from: the RUNs run
    assert again.code == 0, again.stderr
    assert "| ran-the-first-run" in again.stderr and "| ran-the-third-run" in again.stderr
    assert origin not in acbuild("cache", "list", env=env).stdout  # its own entries now
    kept = acbuild("cache", "prune", "--imported", env=env)
    assert kept.stdout.startswith("removed 0 entries")
    bad = acbuild("cache", "prune", "--imported", "--all", env=env)
    assert bad.code == 2 and "not combined" in bad.stderr


@needs_sandbox
def test_export_skips_what_is_there_and_mounts_from_the_cache_from_repository(
        registry: Registry, context: Path, tmp_path: Path) -> None:
    build(context, tmp_path / "c1", tmp_path / "out1", *cache_args(registry, to="main"))
    again = build(context, tmp_path / "c1", tmp_path / "out2", *cache_args(registry, to="main"))
    assert "steps pushed 0, there already 6" in again.stderr
    branch = build(context, tmp_path / "c2", tmp_path / "out3",
                   *cache_args(registry, to="branch", frm=("main",)))
    # only step 6 was imported (the steps before it were never needed on this machine)
    assert "steps pushed 1, there already 0" in branch.stderr
    log = registry.access_log()
    assert any(line.startswith("POST /v2/branch/blobs/uploads/?mount=") for line in log)
    assert not any(line.startswith("PATCH /v2/branch/") for line in log)


def test_tty_shows_remote_hits_as_cached(registry: Registry, hello_context: Path,
                                         tmp_path: Path) -> None:
    args = ["--insecure-registry", registry.host]
    r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "a.aci", *args,
                "--cache-to", f"registry://{registry.host}/hello-cache",
                env={"XDG_CACHE_HOME": str(tmp_path / "c1")})
    assert r.code == 0, r.stderr
    screen = run_in_terminal("build", hello_context / "Acfile", "-o", tmp_path / "b.aci", *args,
                             "--cache-from", f"registry://{registry.host}/hello-cache",
                             env={"XDG_CACHE_HOME": str(tmp_path / "c2")})
    assert screen.code == 0, screen.text
    lines = [*screen.history, *screen.lines]
    steps = [line for line in lines if re.match(r" => (CACHED )?\[\d/8\]", line)]
    assert len(steps) == 8
    assert all(line.startswith(" => CACHED ") for line in steps[:7]), "\n".join(steps)


@needs_sandbox
@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_remote_entry_is_a_warning_and_a_rebuild(
        registry: Registry, context: Path, tmp_path: Path, damage: str) -> None:
    first = build(context, tmp_path / "c1", tmp_path / "out1", *cache_args(registry, to="c"))
    for blob in layer_blobs(registry):
        if damage == "corrupt":
            data = bytearray(blob.read_bytes())
            data[len(data) // 2] ^= 0xFF
            blob.write_bytes(bytes(data))
        else:
            blob.unlink()
    second = build(context, tmp_path / "c2", tmp_path / "out2", *cache_args(registry, frm=("c",)))
    warnings = [line for line in second.stderr.splitlines() if "warning:" in line]
    assert warnings, second.stderr
    assert all(f"registry://{registry.host}/c" in w and "a miss" in w for w in warnings)
    assert "corrupt" in warnings[0] if damage == "corrupt" else "not" in warnings[0]
    assert "| ran-the-first-run" in second.stderr  # built again
    assert f"[3/{STEPS}] CACHED" not in second.stderr
    assert second.stdout != first.stdout  # a new /stamp
    # nothing damaged reached the local cache: a rebuild from it is the second image
    third = build(context, tmp_path / "c2", tmp_path / "out3")
    assert third.stdout == second.stdout


def test_an_unreachable_cache_is_warned_about_once(context: Path, hello_context: Path,
                                                   tmp_path: Path) -> None:
    r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "h.aci", "--progress=plain",
                "--insecure-registry", "127.0.0.1:9", "--cache-from", "registry://127.0.0.1:9/c")
    assert r.code == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "cannot reach" in warnings[0], r.stderr


def test_cache_to_an_unreachable_registry_fails_in_one_line(hello_context: Path,
                                                            tmp_path: Path) -> None:
    r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "h.aci",
                "--insecure-registry", "127.0.0.1:9", "--cache-to", "registry://127.0.0.1:9/c")
    assert r.code == 1
    assert "Traceback" not in r.stderr
    (error,) = [line for line in r.stderr.splitlines() if "error:" in line]
    assert "cannot reach" in error


@pytest.mark.parametrize(("args", "message"), [
    (["--cache-from", "docker://registry.example/cache"], "registry://REGISTRY/REPO"),
    (["--cache-to", "registry://registry.example/cache:tag"], "without a tag"),
    (["--cache-to", "registry://registry.example/Cache"], "must be lower case"),
    (["--cache-to", "registry://registry.example/cache", "--no-cache"], "--no-cache"),
    (["--cache-to", "registry://alice:S3CRETPW@registry.example/c"], "cannot hold credentials"),
])
def test_bad_cache_options_are_usage_errors(hello_context: Path, args: list[str],
                                            message: str) -> None:
    r = acbuild("build", hello_context / "Acfile", *args)
    assert r.code == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert "S3CRETPW" not in r.stderr


def test_credentials_stay_out_of_the_cache(tmp_path: Path, hello_context: Path) -> None:
    skip_without_registry()
    with start_registry(tmp_path / "reg", "basic") as reg:
        docker = tmp_path / "docker"
        docker.mkdir()
        auth = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
        (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        env = {"DOCKER_CONFIG": str(docker), "XDG_RUNTIME_DIR": str(tmp_path / "none")}
        args = ["--ca-file", str(reg.ca), "-v", "--progress=plain"]
        first = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "a.aci", *args,
                        "--cache-to", f"registry://{reg.host}/private/cache",
                        env={**env, "XDG_CACHE_HOME": str(tmp_path / "c1")})
        assert first.code == 0, first.stderr
        second = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "b.aci", *args,
                         "--cache-from", f"registry://{reg.host}/private/cache",
                         env={**env, "XDG_CACHE_HOME": str(tmp_path / "c2")})
        assert second.code == 0, second.stderr
        assert "step 7 imported" in second.stderr
        secret = (reg.password or "").encode()
        assert secret
        for out in (first, second):
            assert secret.decode() not in out.stdout + out.stderr
            assert auth not in out.stdout + out.stderr
        for where in (tmp_path / "c1", tmp_path / "c2", reg.storage):
            for f in where.rglob("*"):
                if f.is_file() and not f.is_symlink():
                    data = f.read_bytes()
                    assert secret not in data and auth.encode() not in data, f


@needs_sandbox
def test_a_stage_imported_whole_is_restored_when_a_later_stage_copies_from_it(
        registry: Registry, tmp_path: Path) -> None:
    ctx = tmp_path / "stages"
    make_busybox_rootfs(ctx / "bb")
    (ctx / "Acfile").write_text("""\
BEGIN ./bb AS build
RUN /bin/sh -c 'mkdir -p /out && date +%s%N > /out/note && echo ran-the-build-stage'
BEGIN scratch
NAME example.com/stages
ENV X={{ x }}
COPY --from=build /out/note /etc/note
""")

    def note(r: Result, image: Path) -> bytes:
        assert r.code == 0, r.stderr
        with tarfile.open(image) as tar:
            member = tar.extractfile("rootfs/etc/note")
            assert member is not None
            return member.read()

    args = ["--insecure-registry", registry.host, "--progress=plain"]
    first = acbuild("build", ctx / "Acfile", "-o", tmp_path / "one.aci", "--var", "x=1", *args,
                    "--cache-to", f"registry://{registry.host}/stages",
                    env={"XDG_CACHE_HOME": str(tmp_path / "c1")})
    made = note(first, tmp_path / "one.aci")
    second = acbuild("build", ctx / "Acfile", "-o", tmp_path / "two.aci", "--var", "x=2", *args,
                     "--cache-from", f"registry://{registry.host}/stages",
                     env={"XDG_CACHE_HOME": str(tmp_path / "c2")})
    assert note(second, tmp_path / "two.aci") == made  # the build stage's RUN did not run
    assert "| ran-the-build-stage" not in second.stderr
    assert "[2/7] CACHED" in second.stderr.splitlines()
    assert "[6/7] COPY --from=build /out/note /etc/note" in second.stderr.splitlines()


def test_an_entry_larger_than_max_image_size_is_a_miss(registry: Registry, hello_context: Path,
                                                       tmp_path: Path) -> None:
    args = ["--insecure-registry", registry.host, "--progress=plain"]
    first = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "a.aci", *args,
                    "--cache-to", f"registry://{registry.host}/hello",
                    env={"XDG_CACHE_HOME": str(tmp_path / "c1")})
    assert first.code == 0, first.stderr
    second = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "b.aci", *args,
                     "--cache-from", f"registry://{registry.host}/hello",
                     "--max-image-size", "100K", env={"XDG_CACHE_HOME": str(tmp_path / "c2")})
    assert second.code == 0, second.stderr
    assert "larger than the limit" in second.stderr
    assert "[6/8] DONE" in second.stderr  # the COPY ran
    assert second.stdout == first.stdout
