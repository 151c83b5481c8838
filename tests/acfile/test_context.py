"""Tests for acbuild.acfile.context: resolving COPY sources, .acignore, globs and the digest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from acbuild.acfile.context import BuildContext, ContextSource, normalised_mode
from acbuild.errors import BuildError, Span


def make(root: Path, files: dict[str, str]) -> Path:
    """A directory tree of text files (rel path -> content); test_copy uses it too."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return make(tmp_path / "ctx", {
        "a.txt": "a", "b.txt": "b", "c.md": "c",
        "src/main.py": "m", "src/pkg/mod.py": "p", "src/pkg/data.bin": "d",
    })


def rels(sources: list[ContextSource]) -> list[str]:
    return [s.rel for s in sources]


def error(fn, *args, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(BuildError) as info:
        fn(*args, **kw)
    return info.value.message


def test_resolve_file_and_directory(ctx: Path) -> None:
    context = BuildContext(ctx)
    [f] = context.resolve("a.txt")
    assert (f.rel, f.path, f.is_dir, f.is_symlink) == ("a.txt", ctx / "a.txt", False, False)
    [d] = context.resolve("./src/")
    assert (d.rel, d.is_dir, d.name) == ("src", True, "src")
    [whole] = context.resolve(".")
    assert (whole.rel, whole.is_dir, whole.name) == (".", True, "")
    [back] = context.resolve("src/../b.txt")
    assert back.rel == "b.txt"


def test_missing_source_names_the_context(ctx: Path) -> None:
    span = Span(file="Acfile", line=3)
    with pytest.raises(BuildError) as info:
        BuildContext(ctx).resolve("missing.txt", span=span)
    assert info.value.message == f"COPY source 'missing.txt' not found in context '{ctx}'"
    assert info.value.span == span


@pytest.mark.parametrize("unsafe", ["../secret", "/etc/passwd", "src/../../x", ".."])
def test_paths_outside_the_context(ctx: Path, unsafe: str) -> None:
    assert error(BuildContext(ctx).resolve, unsafe) == (
        f"COPY source '{unsafe}' is outside the build context")


def test_symlinked_directory_leaving_the_context(tmp_path: Path, ctx: Path) -> None:
    make(tmp_path / "outside", {"x": "secret"})
    (ctx / "link").symlink_to(tmp_path / "outside")
    (ctx / "rel").symlink_to("../outside")
    context = BuildContext(ctx)
    assert error(context.resolve, "link/x") == (
        "COPY source 'link/x' leaves the build context through symlink 'link'")
    assert error(context.resolve, "rel/x") == (
        "COPY source 'rel/x' leaves the build context through symlink 'rel'")
    assert error(context.resolve, "link/*") == (
        "COPY source 'link/*' leaves the build context through symlink 'link'")


def test_symlinked_directory_inside_the_context_is_followed(ctx: Path) -> None:
    (ctx / "alias").symlink_to("src/pkg")
    [s] = BuildContext(ctx).resolve("alias/mod.py")
    assert s.rel == "src/pkg/mod.py"
    assert s.name == "mod.py"


def test_symlink_named_as_source(tmp_path: Path, ctx: Path) -> None:
    (ctx / "inside").symlink_to("a.txt")
    (ctx / "out").symlink_to(tmp_path / "elsewhere")
    context = BuildContext(ctx)
    [s] = context.resolve("inside")
    assert (s.rel, s.is_symlink, s.is_dir) == ("inside", True, False)
    assert error(context.resolve, "out") == (
        "COPY source 'out' leaves the build context through symlink 'out'")


def test_special_file_source_is_an_error(ctx: Path) -> None:
    os.mkfifo(ctx / "pipe")
    assert error(BuildContext(ctx).resolve, "pipe") == (
        "COPY source 'pipe' is a fifo; only files, directories and symlinks can be copied")


def test_globs(ctx: Path) -> None:
    context = BuildContext(ctx)
    assert rels(context.resolve("*.txt")) == ["a.txt", "b.txt"]
    assert rels(context.resolve("?.md")) == ["c.md"]
    assert rels(context.resolve("[ac].*")) == ["a.txt", "c.md"]
    assert rels(context.resolve("[!a].txt")) == ["b.txt"]
    assert rels(context.resolve("src/*")) == ["src/main.py", "src/pkg"]
    assert rels(context.resolve("**/*.py")) == ["src/main.py", "src/pkg/mod.py"]
    assert rels(context.resolve("src/**")) == [
        "src/main.py", "src/pkg", "src/pkg/data.bin", "src/pkg/mod.py"]
    assert error(context.resolve, "*.rs") == (
        f"COPY source '*.rs' matches nothing in context '{ctx}'")


def test_acignore_file_directory_and_negation(ctx: Path) -> None:
    make(ctx, {
        ".acignore": "*.md\nsrc/pkg/\n*.log\n!keep.log\nsrc/pkg/mod.py\n!src/pkg/mod.py\n",
        "x.log": "", "keep.log": "",
    })
    context = BuildContext(ctx)
    assert context.is_ignored("c.md")
    assert context.is_ignored("src/pkg", is_dir=True)
    # as in git, nothing below an excluded directory comes back with a negation
    assert context.is_ignored("src/pkg/mod.py")
    assert not context.is_ignored("keep.log")
    assert context.is_ignored("x.log")
    assert not context.is_ignored(".acignore")
    assert error(context.resolve, "c.md") == "COPY source 'c.md' is excluded by .acignore"
    assert error(context.resolve, "src/pkg") == "COPY source 'src/pkg' is excluded by .acignore"
    assert error(context.resolve, "*.md") == "COPY source '*.md' is excluded by .acignore"
    assert rels(context.resolve("*.log")) == ["keep.log"]
    [whole] = context.resolve(".")
    assert [rel for rel, _ in context.walk(whole)] == [
        ".acignore", "a.txt", "b.txt", "keep.log", "src", "src/main.py"]


def test_walk_is_sorted_parents_first(ctx: Path) -> None:
    context = BuildContext(ctx)
    [src] = context.resolve("src")
    assert [rel for rel, _ in context.walk(src)] == [
        "main.py", "pkg", "pkg/data.bin", "pkg/mod.py"]
    [f] = context.resolve("a.txt")
    assert list(context.walk(f)) == []


def test_normalised_mode() -> None:
    assert normalised_mode(0o100600) == 0o644
    assert normalised_mode(0o100700) == 0o755
    assert normalised_mode(0o100775) == 0o755
    assert normalised_mode(0o100654) == 0o644  # only the owner's x bit counts, as in git
    assert normalised_mode(0o040700) == 0o755


def digest_of(root: Path, *patterns: str) -> str:
    context = BuildContext(root)
    return context.digest([s for p in patterns for s in context.resolve(p)])


def test_digest_ignores_mtime_and_location(tmp_path: Path, ctx: Path) -> None:
    (ctx / "link").symlink_to("/abs/target")
    before = digest_of(ctx, ".")
    os.utime(ctx / "a.txt", (1, 1))
    os.utime(ctx / "src", (2, 2))
    assert digest_of(ctx, ".") == before
    other = tmp_path / "elsewhere" / "checkout"
    shutil.copytree(ctx, other, symlinks=True)
    assert digest_of(other, ".") == before
    assert digest_of(other, "src", "a.txt") == digest_of(ctx, "a.txt", "src")


def test_digest_changes_with_content_mode_link_and_ignore(ctx: Path) -> None:
    base = digest_of(ctx, "src")
    (ctx / "src/pkg/mod.py").write_text("changed")
    changed = digest_of(ctx, "src")
    assert changed != base
    (ctx / "src/main.py").chmod(0o755)
    moded = digest_of(ctx, "src")
    assert moded != changed
    (ctx / "src/main.py").chmod(0o775)  # same normalised mode: same digest
    assert digest_of(ctx, "src") == moded
    (ctx / "src/l").symlink_to("a")
    linked = digest_of(ctx, "src")
    (ctx / "src/l").unlink()
    (ctx / "src/l").symlink_to("b")
    assert len({moded, linked, digest_of(ctx, "src")}) == 3
    (ctx / ".acignore").write_text("*.bin\n")
    assert digest_of(ctx, "src") != digest_of(ctx.parent / "ctx", "src", "a.txt")
    ignored = digest_of(ctx, "src")
    (ctx / ".acignore").write_text("")
    assert digest_of(ctx, "src") != ignored


def test_acignore_must_be_a_regular_file(ctx: Path) -> None:
    (ctx / ".acignore").mkdir()
    assert error(BuildContext, ctx) == f".acignore in '{ctx}' is not a regular file"
