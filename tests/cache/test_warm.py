"""The warm record (acbuild.cache.warm): a no-op rebuild answered by stat, and never a stale
answer — each input a build reads, changed, gives the image a fresh build gives."""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from acbuild.cache import warm
from tests.support.cli import Result, acbuild

HIT = "is up to date: nothing this build reads changed"
ACFILE = """BEGIN ./base
NAME example.com/warm
LABEL version={{ version }}
ENV GREETING="{{ greeting }}"
COPY file.txt /etc/file.txt
COPY src/ /src/
COPY glob/*.txt /glob/
"""


def settle(root: Path) -> None:
    """Make every file look written long ago, then wait out the ctime window: files changed
    moments before a build are never trusted by stat (the racy-clean rule)."""
    old = time.time() - 60
    for path in [root, *root.rglob("*")]:
        os.utime(path, (old, old), follow_symlinks=False)
    time.sleep(0.25)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "base" / "etc").mkdir(parents=True)
    (ctx / "base" / "etc" / "os-release").write_text("ID=warm\n")
    (ctx / "src" / "sub").mkdir(parents=True)
    (ctx / "src" / "a.c").write_text("int a;\n")
    (ctx / "src" / "sub" / "b.c").write_text("int b;\n")
    (ctx / "glob").mkdir()
    (ctx / "glob" / "one.txt").write_text("one\n")
    (ctx / "file.txt").write_text("file 1\n")
    (ctx / "vars.toml").write_text('greeting = "hello"\n')
    (ctx / "Acfile").write_text(ACFILE)
    settle(ctx)
    return tmp_path


def build(project: Path, *extra: str, env: dict[str, str] | None = None,
          cache: bool = True) -> Result:
    ctx = project / "ctx"
    args = ["-v", "build", ctx / "Acfile", "-o", project / "out.aci", "--var-file",
            ctx / "vars.toml", "--var", "version=1", *extra]
    args += ["--cache-dir", project / "cache"] if cache else ["--no-cache"]
    r = acbuild(*args, cwd=project, env={"SOURCE_DATE_EPOCH": "1000000", **(env or {})})
    assert r.code == 0, r.stderr
    return r


def warm_up(project: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    """Build until the warm record answers (the first build hardlinks context files, which
    changes their ctimes: the second keeps a record of the settled state)."""
    for _ in range(4):
        r = build(project, *extra, env=env)
        if HIT in r.stderr:
            return r.stdout.strip()
        time.sleep(0.15)
    raise AssertionError(f"no warm hit after 4 builds:\n{r.stderr}")


def same_size_edit(path: Path, text: str) -> None:
    """Content changed, size and mtime kept: only the ctime tells."""
    st = path.stat()
    assert len(text.encode()) == st.st_size
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_noop_rebuild_is_answered_without_building(project: Path) -> None:
    first = warm_up(project)
    out = project / "out.aci"
    before = out.stat()
    r = build(project)
    assert HIT in r.stderr and r.stdout.strip() == first
    assert "[1/" in r.stderr and "CACHED" in r.stderr  # the steps are still reported
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert first == build(project, cache=False).stdout.strip()


def _change_acfile(p: Path) -> None:
    (p / "ctx" / "Acfile").write_text(ACFILE + "LABEL extra=1\n")


def _change_var_file(p: Path) -> None:
    same_size_edit(p / "ctx" / "vars.toml", 'greeting = "HELLO"\n')


def _change_copied_file(p: Path) -> None:
    same_size_edit(p / "ctx" / "file.txt", "file 2\n")


def _change_file_deep_in_copied_dir(p: Path) -> None:
    same_size_edit(p / "ctx" / "src" / "sub" / "b.c", "int c;\n")


def _add_file_to_copied_dir(p: Path) -> None:
    (p / "ctx" / "src" / "sub" / "new.c").write_text("int n;\n")


def _add_file_matching_glob(p: Path) -> None:
    (p / "ctx" / "glob" / "two.txt").write_text("two\n")


def _change_base(p: Path) -> None:
    same_size_edit(p / "ctx" / "base" / "etc" / "os-release", "ID=cold\n")


def _chmod_copied_file(p: Path) -> None:
    (p / "ctx" / "file.txt").chmod(0o755)


def _ignore_a_copied_file(p: Path) -> None:
    (p / "ctx" / ".acignore").write_text("src/a.c\n")


def _swap_copied_file_for_symlink(p: Path) -> None:
    f = p / "ctx" / "src" / "a.c"
    f.unlink()
    f.symlink_to("sub/b.c")


MUTATIONS: dict[str, Callable[[Path], None]] = {
    "acfile": _change_acfile,
    "var-file": _change_var_file,
    "copied-file": _change_copied_file,
    "file-deep-in-dir": _change_file_deep_in_copied_dir,
    "file-added-to-dir": _add_file_to_copied_dir,
    "file-matching-glob": _add_file_matching_glob,
    "base": _change_base,
    "mode": _chmod_copied_file,
    "acignore": _ignore_a_copied_file,
    "symlink": _swap_copied_file_for_symlink,
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_a_changed_input_is_never_a_stale_hit(project: Path,
                                              mutate: Callable[[Path], None]) -> None:
    first = warm_up(project)
    mutate(project)
    r = build(project)
    assert HIT not in r.stderr
    fresh = build(project, cache=False).stdout.strip()
    assert r.stdout.strip() == fresh != first


@pytest.mark.parametrize(("extra", "env"), [
    (("--var", "version=2"), {}),
    ((), {"SOURCE_DATE_EPOCH": "2000000"}),
    (("--compression", "none"), {}),
], ids=["var", "source-date-epoch", "compression"])
def test_a_changed_option_or_epoch_is_never_a_stale_hit(
        project: Path, extra: tuple[str, ...], env: dict[str, str]) -> None:
    warm_up(project)
    out = project / "out.aci"
    first = out.read_bytes()
    r = build(project, *extra, env=env)
    assert HIT not in r.stderr
    rebuilt = out.read_bytes()
    build(project, *extra, env=env, cache=False)
    assert rebuilt == out.read_bytes() != first  # the image ID ignores the compression


def test_a_retargeted_context_symlink_is_not_the_same_context(project: Path) -> None:
    ctx = project / "ctx"
    other = project / "other"
    shutil.copytree(ctx, other, symlinks=True)
    (other / "file.txt").write_text("other\n")
    link = project / "link"
    link.symlink_to("ctx")
    settle(project)
    first = warm_up(project, "--context", str(link))
    link.unlink()
    link.symlink_to("other")
    r = build(project, "--context", str(link))
    assert HIT not in r.stderr and r.stdout.strip() != first


def test_a_tampered_output_is_rebuilt(project: Path) -> None:
    first = warm_up(project)
    out = project / "out.aci"
    data = bytearray(out.read_bytes())
    data[-20] ^= 0xFF
    st = out.stat()
    out.write_bytes(bytes(data))
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime
    r = build(project)
    assert HIT not in r.stderr and r.stdout.strip() == first
    assert out.read_bytes() != bytes(data)  # the image was written again
    assert build(project, cache=False).stdout.strip() == first


def test_an_output_replaced_by_another_file_is_rebuilt(project: Path) -> None:
    first = warm_up(project)
    out = project / "out.aci"
    out.unlink()
    out.write_bytes(b"not an image")
    r = build(project)
    assert HIT not in r.stderr and r.stdout.strip() == first
    assert out.stat().st_size > 100


def test_a_signature_beside_the_output_is_left_to_a_full_build(project: Path) -> None:
    warm_up(project)
    asc = project / "out.aci.asc"
    asc.write_text("stale\n")
    r = build(project)
    assert HIT not in r.stderr
    assert not asc.exists()  # removed as before: it signed another image


def test_a_file_changed_moments_before_the_build_keeps_no_record(project: Path) -> None:
    (project / "ctx" / "file.txt").write_text("fresh\n")  # mtime: now
    for _ in range(2):
        assert HIT not in build(project).stderr


def test_a_record_in_a_cache_other_users_may_write_is_not_used(project: Path) -> None:
    warm_up(project)
    cache = project / "cache"
    cache.chmod(0o777)
    try:
        r = acbuild("-v", "build", project / "ctx" / "Acfile", "-o", project / "out.aci",
                    "--var-file", project / "ctx" / "vars.toml", "--var", "version=1",
                    "--cache-dir", cache, cwd=project, env={"SOURCE_DATE_EPOCH": "1000000"})
        assert HIT not in r.stderr
    finally:
        cache.chmod(0o700)


def test_a_damaged_record_is_a_miss(project: Path) -> None:
    first = warm_up(project)
    for record in (project / "cache" / "warm").iterdir():
        data = record.read_bytes()
        record.write_bytes(data.replace(b'"image":["sha512-', b'"image":["sha512-0'))
    r = build(project)
    assert HIT not in r.stderr and r.stdout.strip() == first


def test_a_record_nested_too_deep_is_a_miss_not_a_traceback(project: Path) -> None:
    first = warm_up(project)
    deep = b"[" * 100_000  # sealed as the record is: only what the parser makes of it counts
    for record in (project / "cache" / "warm").iterdir():
        record.write_bytes(hashlib.sha256(deep).hexdigest().encode() + b"\n" + deep)
    r = build(project)
    assert HIT not in r.stderr and r.stdout.strip() == first


def test_a_noop_hit_does_not_load_the_template_engine_or_parser(project: Path) -> None:
    warm_up(project)
    ctx = project / "ctx"
    code = (
        "import sys\n"
        "from acbuild.cli.main import main\n"
        "try:\n"
        f"    main(['-q', 'build', {str(ctx / 'Acfile')!r}, '-o', {str(project / 'out.aci')!r},"
        f" '--var-file', {str(ctx / 'vars.toml')!r}, '--var', 'version=1', '--cache-dir',"
        f" {str(project / 'cache')!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = {'jinja2', 'lark', 'rich', 'gnupg', 'acbuild.build.build',\n"
        # What the options' callbacks and the record's read imported for nothing (~50 ms
        # of a 0.26 s no-op): the instructions' dataclasses, tempfile (shutil, lzma,
        # random), socket, ctypes, the registry's references.
        "    'acbuild.acfile.instructions', 'tempfile', 'socket', 'ctypes',\n"
        "    'acbuild.distribution.registry.reference'} & set(sys.modules)\n"
        "print(sorted(heavy))\n")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True,
                          text=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1000000"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_record_key_changes_with_the_step_cache_format(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from acbuild.cache import warm

    before = warm.invocation_key([("acfile", "/x/Acfile")])
    monkeypatch.setattr(warm, "FORMAT_VERSION", b"acbuild-py step cache 99")
    assert warm.invocation_key([("acfile", "/x/Acfile")]) != before


def _filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on (the longest mount point above it)."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point, fstype = line.split()[1:3]
        if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def _result(out: Path) -> warm.WarmResult:
    return warm.WarmResult(steps=(), image_id="sha512-x", name="example.com/w", version=None,
                           size=1, uncompressed_size=1, entries=1, output=out)


def test_an_output_written_through_a_mapping_made_before_its_record_is_no_hit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RC-8: a mapping of the output made, and its page dirtied, before the record's
    signature was taken lets later stores change the output without moving a time. The
    record trusts that signature only after a flush (which write-protects the mapping):
    a store then moves the ctime, and the next identical build is no hit."""
    if _filesystem(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("tmpfs never write-protects a mapping (the documented limit)")
    monkeypatch.setattr(warm, "settled", lambda st, now: True)  # no 3 s waits
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    out = tmp_path / "out.aci"
    out.write_bytes(b"IMAGE" * 4096)
    fd = os.open(out, os.O_RDWR)
    mapping = mmap.mmap(fd, 0, mmap.MAP_SHARED)
    os.close(fd)
    try:
        mapping[:5] = b"IMAGE"  # faults now: the page is dirty and writable
        warm.store(cache, "k", warm.Witness(), _result(out),
                   hashlib.sha256(out.read_bytes()).hexdigest())
        assert warm.check(cache, "k") is not None  # hashed: still the image
        mapping[:5] = b"EVIL!"
        assert warm.check(cache, "k") is None, "vouched for bytes the output lacks"
    finally:
        mapping.close()


def test_a_record_is_never_read_through_another_users_symlink(project: Path) -> None:
    """The record answers only from a cache directory no one else controls, its path
    included: through a link `nobody` owns (and could re-point at records of theirs after
    a check) there is no hit, and the build refuses the cache as the step cache does."""
    from tests.support.otheruser import as_nobody, shared_directory

    warm_up(project)
    for shared in shared_directory():
        link = shared / "build-cache"
        as_nobody(functools.partial(link.symlink_to, project / "cache"))
        ctx = project / "ctx"
        r = acbuild("-v", "build", ctx / "Acfile", "-o", project / "out.aci", "--var-file",
                    ctx / "vars.toml", "--var", "version=1", "--cache-dir", link,
                    cwd=project, env={"SOURCE_DATE_EPOCH": "1000000"})
        assert HIT not in r.stderr
        assert r.code == 1 and f"step cache {link} is a symlink that belongs to uid" in r.stderr


def _recorded(tmp_path: Path, look: Callable[[warm.Witness], None]) -> Path:
    """A record of what ``look`` shows the witness (the output a small file), kept in a
    private cache under the key "k"; its directory."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    out = tmp_path / "out.aci"
    out.write_bytes(b"IMAGE")
    witness = warm.Witness()
    look(witness)
    assert witness.complete, witness.why_not
    warm.store(cache, "k", witness, _result(out), hashlib.sha256(b"IMAGE").hexdigest())
    return cache


def test_a_record_holds_any_name_followed_or_not_and_absent_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory's entries are recorded as their joined names and one digest of their
    signatures: names with a newline, a space, bytes that are no UTF-8, a symlink looked
    at and followed, and a name that was absent; a change to any of them is no hit."""
    monkeypatch.setattr(warm, "settled", lambda st, now: True)
    tree = tmp_path / "tree"
    tree.mkdir()
    odd = ["new\nline", "sp ace", os.fsdecode(b"caf\xe9"), "plain"]
    for name in odd:
        (tree / name).write_bytes(b"x")
    (tree / "link").symlink_to("plain")
    (tmp_path / "other").mkdir()

    def look(witness: warm.Witness) -> None:
        for name in odd:
            witness.look(tree / name)
        witness.look(tree / "link")
        witness.look(tree / "link", follow=True)
        witness.look(tree / "absent")
        witness.look(tmp_path / "other")

    cache = _recorded(tmp_path, look)
    assert warm.check(cache, "k") is not None
    (tree / "absent").write_text("here now")
    assert warm.check(cache, "k") is None
    (tree / "absent").unlink()
    assert warm.check(cache, "k") is not None
    (tree / "plain").write_text("longer than before")  # the link's target, followed
    assert warm.check(cache, "k") is None


def test_a_record_of_many_files_is_checked_in_little_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A no-op of a tree of 100,000 files peaked at 100 MB: the record (a list of eight
    numbers for each file) was loaded whole, as JSON lists, to be compared. Checked now a
    directory at a time from a line of names and a digest: under 150 bytes a file (~55
    here; it was ~700: the lists, and three copies of a record of ~94 bytes a file)."""
    import tracemalloc

    monkeypatch.setattr(warm, "settled", lambda st, now: True)
    files = [tmp_path / "tree" / f"d{i // 100:02}" / f"f{i:05}.txt" for i in range(5000)]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")

    def look(witness: warm.Witness) -> None:
        for path in files:
            witness.look(path)

    cache = _recorded(tmp_path, look)
    assert warm.check(cache, "k") is not None  # the first hit rewrites the record (settled)
    tracemalloc.start()
    try:
        assert warm.check(cache, "k") is not None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150 * len(files), f"{peak / len(files):.0f} bytes a file"
    files[-1].write_text("y")
    assert warm.check(cache, "k") is None


def test_a_witness_of_many_files_holds_little_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build of 100,000 files held ~21 MB of witness: a (path, follow) key and a tuple of
    eight numbers for each. It keeps a directory's names and packed signatures now, ~80
    bytes a file; and what it records is the same: the last signature of each (name,
    follow), absent names included, in the order first seen."""
    import tracemalloc

    monkeypatch.setattr(warm, "settled", lambda st, now: True)
    root = tmp_path / "tree"
    files = [root / f"d{i // 100:02}" / f"f{i:05}.txt" for i in range(5000)]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    stats = [(os.fspath(path), path.lstat()) for path in files]
    tracemalloc.start()
    try:
        witness = warm.Witness()
        for path, st in stats:
            witness.seen(path, st)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 120 * len(files), f"{held / len(files):.0f} bytes a file"
    witness.look(root / "d00" / "absent")
    witness.look(root / "d00", follow=True)
    witness.seen(stats[0][0], stats[1][1])  # seen again: the last signature counts
    inputs = {directory: (names, follows) for directory, names, follows, _ in
              witness.inputs()}
    assert inputs[str(root / "d00")] == (
        "/".join([*(f"f{i:05}.txt" for i in range(100)), "absent"]), "0" * 101)
    assert inputs[str(root)] == ("d00", "1")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    out = tmp_path / "out.aci"
    out.write_bytes(b"IMAGE")
    warm.store(cache, "k", witness, _result(out), hashlib.sha256(b"IMAGE").hexdigest())
    assert warm.check(cache, "k") is None  # f00000 is recorded with f00001's signature
