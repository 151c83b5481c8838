"""open_private_dir: a directory reached only through what this user or root controls."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from acbuild.fs.private import UnsafeDirectory, create_private_file, open_private_dir
from tests.support.otheruser import NOBODY, need_root, shared_directory, with_user_database


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


def test_dot_dot_after_a_symlink_is_the_parent_of_its_target(tmp_path: Path) -> None:
    """RT4-3: the walk took ``link/..`` as text (abspath), so ``link`` was never looked at
    and the walk reached another directory than the kernel does for the same path."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "mine").symlink_to(tmp_path / "real" / "sub")
    assert opened(tmp_path / "mine" / "..") == tmp_path / "real"


def test_dot_dot_after_another_users_symlink_is_refused(tmp_path: Path) -> None:
    need_root()
    (tmp_path / "theirs" / "sub").mkdir(parents=True)
    for made in (tmp_path / "theirs", tmp_path / "theirs" / "sub"):
        os.chown(made, NOBODY, NOBODY)
    (tmp_path / "evil").symlink_to(tmp_path / "theirs" / "sub")
    os.lchown(tmp_path / "evil", NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectory, match=f": {tmp_path / 'evil'} is a symlink that "
                                              f"belongs to uid {NOBODY}"):
        opened(tmp_path / "evil" / ".." / "cache")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "theirs" / "cache").exists()


@pytest.mark.parametrize(("mode", "gid", "ok"), [
    (0o1777, 0, True),       # sticky, like /tmp: others cannot rename what is ours in it
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


# open_private_dir on argv[1] by the calling user: "ok", or the error's message.
_OPEN = """
import os, sys
from acbuild.fs.private import UnsafeDirectory, open_private_dir
try:
    os.close(open_private_dir(sys.argv[1], what="step cache"))
    print("ok")
except UnsafeDirectory as e:
    print(e.message)
"""
OPERATOR = "operator:x:11:0:operator:/root:/sbin/nologin\n"  # RHEL's: primary gid 0


@pytest.mark.parametrize(("passwd", "group", "ok"), [
    ("", "", True),                      # root's own group, no one else in it
    (OPERATOR, "", False),               # someone's primary group: never listed in gr_mem
    ("", "wheel:x:0:nobody\n", False),   # listed in another entry of the same gid
])
def test_a_group_writable_directory_is_private_only_if_the_group_is_yours_alone(
        tmp_path: Path, passwd: str, group: str, ok: bool) -> None:
    need_root()
    ci = tmp_path / "ci"
    ci.mkdir(mode=0o775)
    os.chown(ci, 0, 0)
    ci.chmod(0o775)  # root:root 0775, like a /srv/ci
    r = with_user_database(tmp_path, [sys.executable, "-c", _OPEN, str(ci / "cache")],
                           passwd=passwd, group=group)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n" if ok else r.stdout.startswith(
        f"step cache {ci / 'cache'}: {ci} is writable by other users (mode 0775)")


@pytest.mark.parametrize(("passwd", "group", "ok"), [
    ("", "", True),                                   # Debian's user private group
    ("bob:x:4243:4242::/:/bin/false\n", "", False),   # bob's primary group too
    ("", "staff:x:4242:bob\n", False),                # bob listed under that gid
])
def test_a_users_private_group(tmp_path: Path, passwd: str, group: str, ok: bool) -> None:
    for shared in shared_directory():  # that alice can reach
        _alice_opens(tmp_path, shared / "home", passwd, group, ok)


def _alice_opens(tmp_path: Path, home: Path, passwd: str, group: str, ok: bool) -> None:
    home.mkdir()
    os.chown(home, 4242, 4242)
    home.chmod(0o775)  # alice's umask 002
    r = with_user_database(
        tmp_path, ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups",
                   sys.executable, "-c", _OPEN, str(home / ".cache")],
        passwd="alice:x:4242:4242::/:/bin/false\n" + passwd, group="alice:x:4242:\n" + group)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n" if ok else "is writable by other users" in r.stdout, r.stdout


# The real CLI; the instant the step cache has been opened, the user argv[1] (uid:gid) moves
# the cache directory argv[2] away and makes one of their own in its place.
_MOVE_AFTER_OPEN = """
import os, subprocess, sys
who, cache = sys.argv[1].split(":"), sys.argv[2]
sys.argv = ["acbuild-py", *sys.argv[3:]]
import acbuild.cache.cache as store
real = store.open_claimed_dir
def opened(*a, then, **kw):
    def moved(fd):
        subprocess.run(["setpriv", f"--reuid={who[0]}", f"--regid={who[1]}",
                        "--clear-groups", "sh", "-c", f"mv {cache} {cache}.old && mkdir {cache}"],
                       check=True)
        return then(fd)
    return real(*a, then=moved, **kw)
store.open_claimed_dir = opened
from acbuild.cli.main import main
sys.exit(main())
"""


def test_a_user_whose_primary_group_is_roots_cannot_move_the_cache_under_a_build(
        tmp_path: Path) -> None:
    for shared in shared_directory():  # that operator can reach
        ci = shared / "ci"
        ci.mkdir()
        ci.chmod(0o775)  # root:root 0775, like a /srv/ci
        (ci / "probe").mkdir()
        # the premise: operator (uid 11, gid 0, in no group's member list) may rename here
        moved = with_user_database(tmp_path, ["setpriv", "--reuid=11", "--regid=0",
                                              "--clear-groups", "mv", str(ci / "probe"),
                                              str(ci / "moved")], passwd=OPERATOR)
        assert moved.returncode == 0 and (ci / "moved").is_dir(), moved.stderr
        (tmp_path / "ctx" / "base").mkdir(parents=True)
        (tmp_path / "ctx" / "base" / "f1").write_text("genuine\n")
        (tmp_path / "ctx" / "Acfile").write_text("BEGIN ./base\nNAME example.com/rk9\n")
        r = with_user_database(
            tmp_path, [sys.executable, "-c", _MOVE_AFTER_OPEN, "11:0", str(ci / "cache"),
                       "build", str(tmp_path / "ctx" / "Acfile"), "--cache-dir",
                       str(ci / "cache"), "-o", str(tmp_path / "out.aci")], passwd=OPERATOR)
        assert r.returncode == 1, r.stderr
        assert r.stderr.splitlines()[0] == (
            f"error: step cache {ci / 'cache'}: {ci} is writable by other users (mode 0775), "
            "who could replace what is in it")
        assert not (ci / "cache.old").exists() and not (tmp_path / "out.aci").exists()


def test_a_private_file_that_is_a_fifo_or_device_is_refused_unopened(tmp_path: Path) -> None:
    """Red team RO-6: --log-file naming a device opened it (its driver's open ran: a
    watchdog arms) before refusing it."""
    os.mkfifo(tmp_path / "fifo")  # no reader: an open for writing would fail with ENXIO
    with pytest.raises(UnsafeDirectory) as e:
        create_private_file(tmp_path / "fifo", what="log file")
    assert e.value.message == f"log file {tmp_path / 'fifo'} is not a regular file"
