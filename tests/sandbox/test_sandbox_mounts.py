"""Tests for the sandbox's RUN mounts (TreeMount, SecretFile): the helper reopens a source
below its root refusing symlinks and mounts only the inode the caller checked; mounts are
nosuid and nodev; secrets live on a read-only tmpfs that leaves nothing on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from acbuild.errors import SandboxError
from acbuild.sandbox.sandbox import SecretFile, TreeMount, ViewEntry
from tests.support.busybox import make_busybox_rootfs
from tests.support.sandboxrun import needs_sandbox, run

pytestmark = needs_sandbox


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_busybox_rootfs(tmp_path / "root")


def tree(path: Path, rel: str = "", **kw: object) -> TreeMount:
    st = os.lstat(path / rel if rel else path)
    return TreeMount(root=path, rel=rel, identity=(st.st_dev, st.st_ino),
                     is_dir=kw.pop("is_dir", True), target=kw.pop("target", "/m"),  # type: ignore[arg-type]
                     **kw)  # type: ignore[arg-type]


def test_a_swapped_source_is_not_mounted(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    checked = tree(src, "d")
    os.rename(src / "d", src / "old")
    (src / "d").mkdir()  # same name, another inode: what was checked is gone
    with pytest.raises(SandboxError, match="changed since it was checked"):
        run(root, "true", mounts=(checked,))


def test_a_source_swapped_for_a_symlink_is_not_followed(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    checked = tree(src, "d")
    os.rmdir(src / "d")
    (src / "d").symlink_to("/etc")
    with pytest.raises(SandboxError, match="changed since it was checked"):
        run(root, "true", mounts=(checked,))


def test_mounts_are_nosuid_nodev_and_read_only_unless_asked(root: Path, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    result, lines = run(root, "grep -E ' /(ro|rw) ' /proc/mounts | cut -d' ' -f2,4",
                        mounts=(tree(ro, target="/ro"), tree(rw, target="/rw",
                                                             read_only=False)))
    assert result.exit_status == 0, lines
    flags = {line.split()[0]: set(line.split()[1].split(",")) for line in lines}
    assert {"ro", "nosuid", "nodev"} <= flags["/ro"]
    assert {"rw", "nosuid", "nodev"} <= flags["/rw"]


def test_the_mount_points_made_are_removed(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    fd = os.memfd_create("s", os.MFD_CLOEXEC)
    try:
        os.write(fd, b"v")
        result, lines = run(root, "cat /run/secrets/s; ls /deep/er/m",
                            mounts=(tree(src, target="/deep/er/m"),),
                            secrets=(SecretFile(fd=fd, name="s"),))
    finally:
        os.close(fd)
    assert result.exit_status == 0, lines
    assert lines == ["v"]
    assert not (root / "deep").exists() and not (root / "run").exists()


def test_a_target_in_the_image_that_is_a_symlink_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (root / "m").symlink_to("/etc")
    with pytest.raises(SandboxError, match="not a directory"):
        run(root, "true", mounts=(tree(tmp_path / "src", target="/m"),))


@pytest.mark.parametrize("target", ["/proc", "/dev/x", "/", "/a/../proc"])
def test_the_sandbox_refuses_its_own_places(root: Path, tmp_path: Path, target: str) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(SandboxError, match="cannot mount on"):
        run(root, "true", mounts=(tree(tmp_path / "src", target=target),))


@pytest.mark.parametrize("before", [0, 8180, 8192 - 3, 8192 * 2 - 10])
@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_a_secret_is_redacted_across_every_cut(before: int, chunk: int) -> None:
    """However the output arrives and wherever the 8192-character cut falls, no piece
    holds a part of the secret (the red team's RM-1: 8180 characters, then the secret)."""
    from acbuild.sandbox.sandbox import _Lines

    secret = "hunter2-s3cr3t-TOKEN-0192837465"
    data = ("x" * before + secret + "y" * 5 + "\n" + secret).encode()
    pieces: list[str] = []
    lines = _Lines(pieces.append, (secret,))
    for start in range(0, len(data), chunk):
        lines.feed(data[start:start + chunk])
    lines.feed(b"", final=True)
    joined = "".join(pieces)
    assert "hunter2" not in joined and "0192837465" not in joined and "TOKEN" not in joined
    assert joined == "x" * before + "***" + "y" * 5 + "***"
    assert all(len(p) <= 8192 for p in pieces)


def view(path: Path) -> TreeMount:
    """A TreeMount view of ``path`` as bindview lists one (depth-first, names sorted)."""
    entries = []
    for rel in sorted((p.relative_to(path).as_posix() for p in path.rglob("*")),
                      key=lambda r: r.split("/")):
        st = os.lstat(path / rel)
        kind = "symlink" if os.path.islink(path / rel) else \
            "dir" if (path / rel).is_dir() else "file"
        entries.append(ViewEntry(rel=rel, kind=kind, identity=(st.st_dev, st.st_ino),
                                 link=os.readlink(path / rel) if kind == "symlink" else ""))
    return tree(path, view=tuple(entries))


def test_a_view_holds_only_what_was_listed(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f").write_text("listed\n")
    (src / "l").symlink_to("d/f")
    listed = view(src)
    (src / "late").write_text("made after the listing\n")
    (src / "d/late").mkdir()
    result, lines = run(root, "find /m | sort; cat /m/l; grep ' /m' /proc/mounts | "
                        "cut -d' ' -f2,4 | sed 's/,.*//' | sort -u", mounts=(listed,))
    assert result.exit_status == 0, lines
    assert lines == ["/m", "/m/d", "/m/d/f", "/m/l", "listed", "/m ro", "/m/d/f ro"]


@pytest.mark.parametrize("swap", ["file", "dir", "symlink"])
def test_a_view_entry_swapped_after_the_listing_is_not_mounted(root: Path, tmp_path: Path,
                                                               swap: str) -> None:
    """Between the listing and the mount, a listed file or directory replaced (by another
    inode of the same name, or a symlink to the host's /etc): the step does not start."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f").write_text("listed\n")
    listed = view(src)
    if swap == "file":
        os.rename(src / "d/f", src / "d/old")
        (src / "d/f").write_text("other\n")
    elif swap == "dir":
        os.rename(src / "d", src / "old")
        (src / "d").mkdir()
        (src / "d/f").write_text("other\n")
    else:
        os.rename(src / "d", src / "old")
        (src / "d").symlink_to("/etc")
    with pytest.raises(SandboxError, match=r"mount source /d.* changed since it was checked"):
        run(root, "true", mounts=(listed,))
