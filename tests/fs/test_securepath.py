"""securepath: chroot-semantics resolution never leaves the root."""

from __future__ import annotations

import os
import posixpath
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acbuild.errors import AcbuildError
from acbuild.fs.securepath import PathError, ensure_dirs, relpath_in, remove_entry, safe_join


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "usr/lib").mkdir(parents=True)
    (r / "etc").mkdir()
    (r / "etc/passwd").write_text("inside")
    os.symlink("usr/lib", r / "lib")
    os.symlink("/etc", r / "abs")
    os.symlink("../../../../..", r / "up")
    os.symlink("/etc/passwd", r / "pw")
    return r


@pytest.mark.parametrize(
    ("unsafe", "expected"),
    [
        ("a/b", "a/b"),
        ("/a/b", "a/b"),
        ("../../../etc/passwd", "etc/passwd"),
        ("a/../../b", "b"),
        ("lib/x.so", "usr/lib/x.so"),
        ("abs/passwd", "etc/passwd"),
        ("up/etc/passwd", "etc/passwd"),
        ("up/../../tmp", "tmp"),
        ("pw", "pw"),  # the final component is not followed by default
        ("", ""),
        ("/", ""),
        ("./././a//b/", "a/b"),
        ("missing/../etc", "etc"),
    ],
)
def test_safe_join_resolves_inside_root(root: Path, unsafe: str, expected: str) -> None:
    got = safe_join(root, unsafe)
    assert got == (root / expected if expected else root)


def test_safe_join_follow_final(root: Path) -> None:
    assert safe_join(root, "pw", follow_final=True) == root / "etc/passwd"
    assert safe_join(root, "lib", follow_final=True) == root / "usr/lib"
    assert safe_join(root, "up", follow_final=True) == root


def test_symlink_loop_is_an_error(root: Path) -> None:
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(PathError, match=r"too many levels of symbolic links resolving 'a/x'"):
        safe_join(root, "a/x")
    assert isinstance(PathError("x"), AcbuildError)


def test_forty_links_are_fine_forty_one_are_not(root: Path) -> None:
    for i in range(41):
        os.symlink(f"l{i + 1}", root / f"l{i}")
    (root / "l41").mkdir()
    assert safe_join(root, "l1/x") == root / "l41/x"  # 40 links
    with pytest.raises(PathError):
        safe_join(root, "l0/x")


def test_relpath_in(root: Path) -> None:
    assert relpath_in(root, root / "a/b") == "a/b"
    assert relpath_in(root, root) == ""
    with pytest.raises(PathError, match="is outside"):
        relpath_in(root, root.parent / "x")
    with pytest.raises(PathError, match="is outside"):
        relpath_in(root, root / ".." / "x")


def test_ensure_dirs_creates_inside_through_links(root: Path) -> None:
    made: list[str] = []
    got = ensure_dirs(root, "abs/x/y", mode=0o750, on_create=made.append)
    assert got == root / "etc/x/y"
    assert made == ["etc/x", "etc/x/y"]
    assert (root / "etc/x/y").stat().st_mode & 0o7777 == 0o750
    got = ensure_dirs(root, "up/up/new")
    assert got == root / "new"


def test_ensure_dirs_refuses_non_directory(root: Path) -> None:
    with pytest.raises(PathError, match="a non-directory is in the way"):
        ensure_dirs(root, "etc/passwd/x")
    with pytest.raises(PathError, match="a non-directory is in the way"):
        ensure_dirs(root, "pw/x")  # a link to a file


def test_ensure_dirs_dangling_link_creates_inside(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    os.symlink(str(outside), root / "dangling")
    got = ensure_dirs(root, "dangling/sub")
    assert got == root / str(outside).lstrip("/") / "sub"
    assert not outside.exists()


def test_remove_entry(root: Path) -> None:
    assert remove_entry(root / "abs")  # the link, not /etc
    assert (root / "etc/passwd").exists()
    assert remove_entry(root / "usr")
    assert not (root / "usr").exists()
    assert not remove_entry(root / "nothing")


def test_remove_entry_readonly_tree(root: Path) -> None:
    (root / "ro/sub").mkdir(parents=True)
    (root / "ro/sub/f").write_text("x")
    os.chmod(root / "ro/sub", 0o555)
    os.chmod(root / "ro", 0o555)
    assert remove_entry(root / "ro")
    assert not (root / "ro").exists()


_parts = st.sampled_from(["..", ".", "", "a", "b", "lib", "abs", "up", "pw", "loop", "etc", "/"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_parts, max_size=12), follow=st.booleans())
def test_property_result_is_inside_root(root: Path, parts: list[str], follow: bool) -> None:
    if not (root / "loop").is_symlink():
        os.symlink("loop/x", root / "loop")
    unsafe = "/".join(parts)
    try:
        got = safe_join(root, unsafe, follow_final=follow)
    except PathError:
        return
    # lexically inside, and no component below root but the last is a symlink
    rel = relpath_in(root, got)
    here = root
    for i, part in enumerate(rel.split("/") if rel else []):
        here = here / part
        if i < len(rel.split("/")) - 1:
            assert not here.is_symlink()
    if rel:
        assert os.path.realpath(got.parent).startswith(str(root))


@given(name=st.text(alphabet=string.ascii_letters[:4] + "./", max_size=30))
def test_property_empty_root_is_lexical(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    root = tmp_path_factory.getbasetemp() / "empty-root"
    root.mkdir(exist_ok=True)
    expected = posixpath.normpath("/" + name).lstrip("/")
    assert relpath_in(root, safe_join(root, name)) == ("" if expected == "." else expected)
