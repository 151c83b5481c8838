"""The blob store's gc against the processes that use it (RT4-1): `gc --blobs` removed the
whole blobs/ tree under a live pull, its download and the blobs it had stored and was yet to
read. Now a process using the store holds a shared lock, gc waits for it, and removes only
blobs and what killed pulls left half written. Real processes through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acbuild.distribution.registry.blobstore import BlobStore, BlobStoreBusy
from acbuild.fs.leftovers import owner_tag
from tests.support.cli import acbuild

_USING = """
import sys
from pathlib import Path
from acbuild.distribution.registry.blobstore import BlobStore
store = BlobStore(Path(sys.argv[1]))
store.has("sha256:" + "c" * 64, None)  # any use of a blob
print("using", flush=True)
sys.stdin.readline()
"""


def _store(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "store"
    blobs = BlobStore(root).check()
    (blobs / ("b" * 64)).write_bytes(b"a stored layer")
    return root, blobs


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_gc_waits_for_a_process_using_the_store(tmp_path: Path) -> None:
    root, blobs = _store(tmp_path)
    user = subprocess.Popen([sys.executable, "-c", _USING, str(root)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=Path(__file__).parents[2])
    try:
        assert user.stdout is not None and user.stdout.readline() == "using\n"
        gc = subprocess.Popen([sys.executable, "-m", "acbuild", "gc", "--blobs", "--store",
                               str(root)], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "CI": "true"}, cwd=Path(__file__).parents[2])
        time.sleep(1.5)
        assert gc.poll() is None  # waiting
        assert (blobs / ("b" * 64)).exists()
        assert user.stdin is not None
        user.stdin.write("\n")
        user.stdin.close()
        assert user.wait(timeout=10) == 0
        _, err = gc.communicate(timeout=30)
    finally:
        user.kill()
        user.wait()
        for pipe in (user.stdin, user.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
    assert gc.returncode == 0, err
    assert "waiting for the pulls and builds using the blob store to end" in err
    assert "removed 1 pulled blobs" in err
    assert os.listdir(blobs) == []


def test_gc_removes_what_a_killed_pull_half_wrote_and_keeps_the_directory(
        tmp_path: Path) -> None:
    root, blobs = _store(tmp_path)
    half = blobs / f".{'d' * 64}.{_dead_pid()}-{owner_tag().split('-')[1]}.ab12.tmp"
    half.write_bytes(b"half a layer")
    r = acbuild("gc", "--blobs", "--store", root)
    assert r.code == 0, r.stderr
    assert blobs.is_dir() and os.listdir(blobs) == []


def test_a_process_that_uses_the_store_cannot_gc_it(tmp_path: Path) -> None:
    root, _ = _store(tmp_path)
    store = BlobStore(root)
    assert not store.has("sha256:" + "e" * 64, None)
    with pytest.raises(BlobStoreBusy):
        store.gc()
    with pytest.raises(BlobStoreBusy, match="in use by a running pull or build"):
        BlobStore(root).gc()  # another object of this process: not waited for
    del store
    assert BlobStore(root).gc() == (1, 14)
