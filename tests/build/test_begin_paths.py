"""Class 8: a BEGIN that names a host path reads only where the user allowed.

The Acfile is untrusted: `BEGIN /etc` or `BEGIN ../..` would put any host tree into the
image (and into a registry). A host path must lie, after resolving symlinks, in the
Acfile's directory or the context; anything else needs --allow-path DIR on the command
line of build, plan and lint, never the Acfile alone.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.support.cli import Result, acbuild


def acfile(where: Path, base: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "Acfile").write_text(f"BEGIN {base}\nNAME example.com/begin\nLABEL version=1\n"
                                  "EXEC /bin/true\n")
    return where / "Acfile"


def build(path: Path, out: Path, *args: str | Path) -> Result:
    return acbuild("build", "--no-cache", path, "-o", out, *args)


def assert_refused(r: Result, path: Path, shown: str, resolved: str | None = None) -> None:
    first = r.stderr.splitlines()[0] if r.stderr else ""
    assert r.code == 1, r.stderr
    assert first.startswith(f"{path}:1:7: error: BEGIN path '{shown}' is outside the "
                            "Acfile's directory and the build context"), r.stderr
    if resolved is not None:
        assert f"(it resolves to '{resolved}')" in first
    assert "hint: a host path outside them needs --allow-path" in r.stderr
    assert "Traceback" not in r.stderr


def host_tree(tmp_path: Path) -> Path:
    """A directory outside the project, standing for the host's /etc or $HOME."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("host only\n")
    return host


@pytest.mark.parametrize("base", ["/etc", "../..", "..", "../host"])
def test_begin_outside_the_project_is_refused(tmp_path: Path, base: str) -> None:
    host_tree(tmp_path)
    path = acfile(tmp_path / "proj", base)
    out = tmp_path / "x.aci"
    r = build(path, out)
    assert not out.exists()
    assert_refused(r, path, base)


@pytest.mark.parametrize("prefix", ["docker-archive:", "oci:", "oci-archive:"])
def test_converted_bases_outside_the_project_are_refused(tmp_path: Path, prefix: str) -> None:
    host_tree(tmp_path)
    path = acfile(tmp_path / "proj", f"{prefix}../host:tag")
    r = build(path, tmp_path / "x.aci")
    assert_refused(r, path, "../host")


def test_a_symlink_in_the_project_pointing_out_is_refused(tmp_path: Path) -> None:
    host = host_tree(tmp_path)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "base").symlink_to(host)
    (proj / "deeper").mkdir()
    (proj / "deeper" / "link").symlink_to("../../host")
    for base in ("./base", "./deeper/link", "oci:./base"):
        path = acfile(proj, base)
        r = build(path, tmp_path / "x.aci")
        assert_refused(r, path, base.removeprefix("oci:"), resolved=str(host))


def test_a_base_inside_the_project_or_the_context_builds(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "rootfs").mkdir(parents=True)
    (proj / "rootfs" / "hello").write_text("hi\n")
    r = build(acfile(proj, "./rootfs"), tmp_path / "a.aci")
    assert r.code == 0, r.stderr
    # the Acfile elsewhere, the base in the context given on the command line
    ctx = tmp_path / "ctx"
    (ctx / "rootfs").mkdir(parents=True)
    (ctx / "rootfs" / "hello").write_text("hi\n")
    path = acfile(tmp_path / "acfiles", "../ctx/rootfs")
    r = build(path, tmp_path / "b.aci", "--context", ctx)
    assert r.code == 0, r.stderr


def test_allow_path_lets_a_build_read_there_and_nowhere_else(tmp_path: Path) -> None:
    host = host_tree(tmp_path)
    (tmp_path / "host-sibling").mkdir()
    (host / "link-out").symlink_to(tmp_path / "host-sibling")
    proj = tmp_path / "proj"
    out = tmp_path / "x.aci"
    r = build(acfile(proj, str(host)), out, "--allow-path", host)
    assert r.code == 0, r.stderr
    with tarfile.open(out) as t:
        assert "rootfs/secret" in t.getnames()
    # a prefix of the name is not a parent directory
    path = acfile(proj, str(tmp_path / "host-sibling"))
    assert_refused(build(path, out, "--allow-path", host), path, str(tmp_path / "host-sibling"))
    # nor does a symlink below an allowed directory lead out of it
    path = acfile(proj, str(host / "link-out"))
    assert_refused(build(path, out, "--allow-path", host), path, str(host / "link-out"),
                   resolved=str(tmp_path / "host-sibling"))
    # repeatable
    r = build(path, out, "--allow-path", host, "--allow-path", tmp_path / "host-sibling")
    assert r.code == 0, r.stderr


def test_plan_and_lint_refuse_it_too(tmp_path: Path) -> None:
    host = host_tree(tmp_path)
    path = acfile(tmp_path / "proj", str(host))
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert_refused(acbuild("plan", path, *cache), path, str(host))
    assert_refused(acbuild("lint", path), path, str(host))
    assert acbuild("plan", path, "--allow-path", host, *cache).code == 0
    assert acbuild("lint", path, "--allow-path", host).code == 0
