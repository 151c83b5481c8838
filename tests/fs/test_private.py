"""open_private_dir: a directory reached only through what this user or root controls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from acbuild.fs.private import UnsafeDirectory, open_private_dir
from tests.support.otheruser import NOBODY, need_root


def opened(path: Path, **kw: bool) -> Path:
    fd = open_private_dir(path, what="step cache", **kw)
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    finally:
        os.close(fd)


def test_made_when_missing_and_reached_through_links_of_ours(tmp_path: Path) -> None:
    assert opened(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    (tmp_path / "link").symlink_to("a/../a/./b")
    (tmp_path / "chain").symlink_to(tmp_path / "link")
    assert opened(tmp_path / "chain") == tmp_path / "a" / "b"
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(UnsafeDirectory, match="too many levels of symbolic links"):
        opened(tmp_path / "loop")
    with pytest.raises(UnsafeDirectory, match="does not exist"):
        opened(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(("mode", "gid", "ok"), [
    (0o1777, 0, True),       # sticky, like /tmp: others cannot rename what is ours in it
    (0o775, 0, True),        # group-writable by this user's own group (root's, here)
    (0o775, NOBODY, False),  # group-writable by a group of others
    (0o777, 0, False),       # anyone may rename the cache away
])
def test_a_directory_on_the_way_others_may_write(tmp_path: Path, mode: int, gid: int,
                                                  ok: bool) -> None:
    need_root()
    above = tmp_path / "above"
    above.mkdir()
    os.chown(above, 0, gid)
    above.chmod(mode)
    if ok:
        assert opened(above / "cache") == above / "cache"
    else:
        with pytest.raises(UnsafeDirectory, match=f": {above} is writable by other users"):
            opened(above / "cache")
        assert not (above / "cache").exists()


def test_a_symlink_of_another_user_is_refused_wherever_it_is(tmp_path: Path) -> None:
    need_root()
    (tmp_path / "real" / "cache").mkdir(parents=True)
    (tmp_path / "theirs").symlink_to("real")
    os.lchown(tmp_path / "theirs", NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectory) as e:
        opened(tmp_path / "theirs" / "cache")
    assert e.value.message == (f"step cache {tmp_path / 'theirs' / 'cache'}: "
                               f"{tmp_path / 'theirs'} is a symlink that belongs to uid "
                               f"{NOBODY}, not to you (uid 0) or root")
