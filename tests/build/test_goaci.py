"""`acbuild-py go`: real Go modules compiled by the host's go (offline), packaged, validated by
actool, rebuilt to the same image ID, and run under `acbuild-py run` and rkt."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from acbuild.build.goaci import _appc_platform, _image_name, _main_package
from acbuild.errors import BuildError
from acbuild.sandbox.sandbox import sandbox_available
from tests.support.cli import acbuild, actool_validate
from tests.support.gohelp import (
    COMMIT_EPOCH,
    GO_EXAMPLES,
    MAIN,
    git_module,
    go_environ,
    go_missing,
    write_module,
)
from tests.support.services import (
    acbuild_run_argv,
    free_port,
    get,
    rkt_missing,
    rkt_run_argv,
    rkt_state,
    serving,
)

needs_go = pytest.mark.skipif(go_missing() is not None, reason=str(go_missing()))
_no_sandbox = sandbox_available()
needs_sandbox = pytest.mark.skipif(_no_sandbox is not None, reason=f"no sandbox: {_no_sandbox}")


@pytest.fixture
def goenv() -> dict[str, str]:
    return go_environ()


def manifest(image: Path) -> dict[str, object]:
    with tarfile.open(image) as tar:
        member = tar.extractfile("manifest")
        assert member is not None
        return dict(json.load(member))


def labels(image: Path) -> dict[str, str]:
    found = manifest(image)["labels"]
    assert isinstance(found, list)
    return {lb["name"]: lb["value"] for lb in found}


def elf_machine(image: Path, path: str) -> int:
    with tarfile.open(image) as tar:
        member = tar.extractfile(f"rootfs/{path}")
        assert member is not None
        head = member.read(20)
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


# ---- pure parts ----------------------------------------------------------------------


def test_goarch_maps_to_appc_names() -> None:
    assert _appc_platform("linux", "amd64", "") == ("linux", "amd64")
    assert _appc_platform("linux", "arm64", "") == ("linux", "aarch64")
    assert _appc_platform("linux", "386", "") == ("linux", "i386")
    assert _appc_platform("linux", "arm", "7") == ("linux", "armv7l")
    with pytest.raises(BuildError, match="GOOS=linux GOARCH=mips has no AppC"):
        _appc_platform("linux", "mips", "")


def test_names_and_binaries() -> None:
    listed = {"ImportPath": "github.com/Acme/tool/v2",
              "Module": {"Path": "github.com/Acme/tool/v2", "Dir": "/src"}}
    package = _main_package(listed)
    assert package.binary == "tool"  # as go build names it: the major version is no name
    assert _image_name(package, None, several=False) == "github.com/acme/tool/v2"
    assert _image_name(package, None, several=True) == "github.com/acme/tool/v2/tool"
    with pytest.raises(BuildError, match="--name cannot be an image name"):
        _image_name(package, "Bad Name", several=False)


# ---- the verb, for real --------------------------------------------------------------


@needs_go
@needs_sandbox
def test_go_hello_valid_reproducible_and_serves(tmp_path: Path, goenv: dict[str, str]) -> None:
    module = git_module(GO_EXAMPLES / "go-hello", tmp_path / "go-hello")
    first, second = tmp_path / "a.aci", tmp_path / "b.aci"
    r = acbuild("go", module, "-o", first, env=goenv)
    assert r.code == 0, r.stderr
    (image_id,) = r.stdout.splitlines()
    assert image_id.startswith("sha512-")
    # Without the step cache the same commit gives the same image (test_vendored_dependency_
    # offline does it with a cold Go build cache too: too slow for net/http here).
    r2 = acbuild("go", "--no-cache", module, "-o", second, env=goenv)
    assert (r2.code, r2.stdout.splitlines()) == (0, [image_id]), r2.stderr
    assert first.read_bytes() == second.read_bytes()
    actool_validate(first)
    assert labels(first) == {"version": "v1.2.3", "os": "linux", "arch": "amd64"}
    found = manifest(first)
    assert found["name"] == "example.com/go-hello"
    app = found["app"]
    assert isinstance(app, dict) and app["exec"] == ["/bin/go-hello"]
    with tarfile.open(first) as tar:  # SOURCE_DATE_EPOCH came from the commit
        assert tar.getmember("rootfs/bin/go-hello").mtime == COMMIT_EPOCH

    port = free_port()
    with serving(acbuild_run_argv(first, port), port, log=tmp_path / "run.log") as url:
        assert get(url + "/healthz") == "ok\n"
        assert get(url + "/x") == "Hello from go-hello, path /x\n"


@needs_go
def test_printed_acfile_builds_the_same_image(tmp_path: Path, goenv: dict[str, str]) -> None:
    """--print-acfile is a way out: the Acfile, with the binary built as its comment says,
    gives the image `acbuild-py go` gives."""
    module = git_module(GO_EXAMPLES / "go-vendored", tmp_path / "go-vendored", tag=None)
    r = acbuild("go", "--print-acfile", module, env=goenv)
    assert r.code == 0, r.stderr
    acfile = r.stdout
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=module, text=True,
                            capture_output=True, check=True).stdout.strip()
    assert f"LABEL version={commit} os=linux arch=amd64\n" in acfile
    assert "go build -trimpath -ldflags=-buildid= -mod=vendor -o go-vendored" in acfile
    assert not list(tmp_path.glob("*.aci"))  # printing builds nothing
    build_line = next(line for line in acfile.splitlines() if "go build" in line)
    command = build_line.split("CGO_ENABLED=0 ", 1)[1].split()
    subprocess.run(command, cwd=module, env={**goenv, "CGO_ENABLED": "0",
                                             "PATH": "/usr/bin:/bin"}, check=True)
    (module / "Acfile").write_text(acfile)
    by_hand = acbuild("build", module / "Acfile", "-o", tmp_path / "hand.aci",
                      env={**goenv, "SOURCE_DATE_EPOCH": str(COMMIT_EPOCH)})
    (module / "Acfile").unlink()
    (module / "go-vendored").unlink()
    by_verb = acbuild("go", module, "-o", tmp_path / "verb.aci", env=goenv)
    assert by_hand.code == 0 and by_verb.code == 0, by_hand.stderr + by_verb.stderr
    assert by_hand.stdout == by_verb.stdout


@needs_go
@needs_sandbox
def test_vendored_dependency_offline(tmp_path: Path, goenv: dict[str, str]) -> None:
    module = git_module(GO_EXAMPLES / "go-vendored", tmp_path / "go-vendored")
    image = tmp_path / "v.aci"
    r = acbuild("go", module, "-o", image, env=goenv)  # GOPROXY=off: vendor/ or nothing
    assert r.code == 0, r.stderr
    actool_validate(image)
    r = acbuild("run", "--no-stdin", image)
    assert (r.code, r.stdout) == (0, "Hello, AppC, from a vendored module\n"), r.stderr


# The next two compile for an empty Go build cache, which is most of their time: their
# programs need only the runtime (5 s cold), not the examples' net/http (20 to 30 s).
SMALL_MAIN = ('package main\n\nimport "example.com/greet"\n\n'
              'func main() { println(greet.Hello("AppC")) }\n')


def small_vendored_module(dest: Path) -> Path:
    """go-vendored's go.mod and vendor/ with a main that needs only the runtime, in git."""
    source = dest.with_name(dest.name + "-source")
    shutil.copytree(GO_EXAMPLES / "go-vendored", source,
                    ignore=shutil.ignore_patterns("main.go", "README.md"))
    (source / "main.go").write_text(SMALL_MAIN)
    return git_module(source, dest)


@needs_go
def test_a_cold_go_build_cache_gives_the_same_image(tmp_path: Path,
                                                    goenv: dict[str, str]) -> None:
    """A cold Go build cache and no step cache: the same commit, the same image."""
    module = small_vendored_module(tmp_path / "small")
    r = acbuild("go", module, "-o", tmp_path / "warm.aci", env=goenv)
    assert r.code == 0, r.stderr
    again = acbuild("go", "--no-cache", module, "-o", tmp_path / "again.aci",
                    env={**goenv, "GOCACHE": str(tmp_path / "cold-gocache")})
    assert (again.code, again.stdout) == (0, r.stdout), again.stderr
    assert (tmp_path / "cold-gocache").is_dir()  # the build did use the cold cache
    assert (tmp_path / "warm.aci").read_bytes() == (tmp_path / "again.aci").read_bytes()


@needs_go
def test_cross_build_is_labelled(tmp_path: Path, goenv: dict[str, str]) -> None:
    module = small_vendored_module(tmp_path / "m")
    image = tmp_path / "arm.aci"
    r = acbuild("go", module, "-o", image, "--version", "2.0.0",
                env={**goenv, "GOARCH": "arm64"})
    assert r.code == 0, r.stderr
    actool_validate(image)
    assert labels(image) == {"version": "2.0.0", "os": "linux", "arch": "aarch64"}
    assert elf_machine(image, "bin/go-vendored") == 183  # EM_AARCH64


@needs_go
def test_several_main_packages_one_image_each(tmp_path: Path, goenv: dict[str, str]) -> None:
    module = write_module(tmp_path / "tools", "example.com/tools", {
        "cmd/alpha/main.go": MAIN % "alpha", "cmd/beta/main.go": MAIN % "beta",
        "lib/lib.go": "package lib\n",
    })
    out = tmp_path / "out"
    r = acbuild("go", module, "-o", out, "--version", "1.0", env=goenv)
    assert r.code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2
    assert sorted(p.name for p in out.iterdir()) == ["alpha-1.0.aci", "beta-1.0.aci"]
    assert manifest(out / "beta-1.0.aci")["name"] == "example.com/tools/beta"
    assert "no version label" not in r.stderr
    one = tmp_path / "alpha.aci"
    r = acbuild("go", module, "--bin", "alpha", "-o", one, "--version", "1.0", env=goenv)
    assert r.code == 0 and len(r.stdout.splitlines()) == 1, r.stderr
    assert manifest(one)["name"] == "example.com/tools/alpha"
    # A package pattern instead of a directory; not in git: no version label, and a warning.
    r = acbuild("go", "./cmd/beta", "-o", tmp_path / "beta.aci", "--name", "example.com/b",
                cwd=module, env=goenv)
    assert r.code == 0, r.stderr
    assert "no version label" in r.stderr
    assert manifest(tmp_path / "beta.aci")["name"] == "example.com/b"


def _one_line_error(r: object, text: str) -> None:
    code, stderr = r.code, r.stderr  # type: ignore[attr-defined]
    assert code == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], stderr


@needs_go
def test_errors(tmp_path: Path, goenv: dict[str, str]) -> None:
    lib = write_module(tmp_path / "lib", "example.com/lib", {"lib.go": "package lib\n"})
    _one_line_error(acbuild("go", lib, env=goenv), "no main package in")

    cgo = write_module(tmp_path / "cgo", "example.com/cgo", {"main.go": (
        'package main\n\n// #include <stdio.h>\nimport "C"\n\n'
        'func main() { C.puts(C.CString("hi")) }\n')})
    _one_line_error(acbuild("go", cgo, env=goenv), "needs cgo")

    dep = write_module(tmp_path / "dep", "example.com/dep", {
        "main.go": 'package main\n\nimport "example.com/dep/c"\n\nfunc main() { c.F() }\n',
        "c/c.go": 'package c\n\n// int f(void) { return 1; }\nimport "C"\n\n'
                  "func F() { C.f() }\n"})
    _one_line_error(acbuild("go", dep, env=goenv), "does not build with CGO_ENABLED=0")

    bad = write_module(tmp_path / "bad", "example.com/Bad_", {"main.go": MAIN % "x"})
    r = acbuild("go", bad, "--version", "1", env=goenv)
    _one_line_error(r, "module path 'example.com/Bad_' cannot be an image name")
    assert "hint: choose one with --name" in r.stderr
    r = acbuild("go", bad, "--version", "1", "--name", "example.com/good", "-o",
                tmp_path / "good.aci", env=goenv)
    assert r.code == 0, r.stderr

    broken = write_module(tmp_path / "broken", "example.com/broken",
                          {"main.go": "package main\n\nfunc main() { undefined() }\n"})
    r = acbuild("go", broken, "--version", "1", env=goenv)
    _one_line_error(r, "go build example.com/broken failed")
    assert "undefined: undefined" in r.stderr

    empty = tmp_path / "nogo"
    empty.mkdir()
    r = acbuild("go", lib, env={**goenv, "PATH": str(empty)})
    _one_line_error(r, "no Go toolchain")


@needs_go
@pytest.mark.skipif(rkt_missing() is not None, reason=str(rkt_missing()))
def test_go_hello_runs_under_rkt(tmp_path: Path, goenv: dict[str, str]) -> None:
    module = git_module(GO_EXAMPLES / "go-hello", tmp_path / "go-hello")
    image = tmp_path / "hello.aci"
    r = acbuild("go", module, "-o", image, env=goenv)
    assert r.code == 0, r.stderr
    port = free_port()
    with rkt_state() as rkt, serving(rkt_run_argv(rkt, image, port), port,
                                     log=tmp_path / "rkt.log") as url:
        assert get(url + "/healthz") == "ok\n"
