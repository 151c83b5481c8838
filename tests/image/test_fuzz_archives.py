"""Hardening: mutated and hostile archives through every reader — ACI bases, validate, convert.

Every input ends in a correct result or a clean AcbuildError; never another exception, a
hang (SIGALRM per input) or unbounded memory (the readers run in a child limited by RLIMIT_AS).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

from acbuild.errors import ImageError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import unpack_base
from acbuild.image.tarread import Limits
from acbuild.image.validate import validate_image
from tests.support import hostile, ocifixtures
from tests.support.cli import acbuild

REPO = Path(__file__).resolve().parents[2]
ADDRESS_SPACE = 1 << 30  # the child's RLIMIT_AS: far above what streaming needs
PER_INPUT_SECONDS = 10

_WORKER = r"""
import json, resource, signal, sys, tempfile, traceback
from pathlib import Path
limit, seconds = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from acbuild.image.aci import unpack_base
from acbuild.build.build import remove_tree
from acbuild.interop.convert import ConvertOptions, convert
from acbuild.errors import AcbuildError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.validate import validate_image

class Hang(BaseException):
    pass

def alarm(*_):
    raise Hang()

signal.signal(signal.SIGALRM, alarm)

def run(target, path, work):
    if target == "unpack_base":
        (work / "rootfs").mkdir()
        unpack_base(path, StagedRootfs(root=work / "rootfs"))
    elif target == "validate_image":
        validate_image(path)
    else:
        convert(ConvertOptions(kind=target, input=path, output=work / "out.aci"))

for line in sys.stdin:
    target, path = json.loads(line)
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    signal.alarm(seconds)
    try:
        run(target, Path(path), work)
        outcome, detail = "ok", ""
    except AcbuildError as e:
        outcome, detail = "error", e.message
    except Hang:
        outcome, detail = "hang", ""
    except BaseException:
        outcome, detail = "bug", traceback.format_exc()
    finally:
        signal.alarm(0)
    remove_tree(work)
    print(json.dumps([target, path, outcome, detail]), flush=True)
"""


def read_all(jobs: list[tuple[str, Path]]) -> list[tuple[str, str, str, str]]:
    """Run each (reader, file) in one memory-limited child; (target, path, outcome, detail)."""
    lines = "".join(json.dumps([t, str(p)]) + "\n" for t, p in jobs)
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, str(ADDRESS_SPACE), str(PER_INPUT_SECONDS)],
        input=lines, capture_output=True, text=True, cwd=REPO,
        timeout=60 + PER_INPUT_SECONDS * len(jobs),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [tuple(json.loads(line)) for line in proc.stdout.splitlines()]
    assert len(results) == len(jobs), proc.stderr[-3000:]
    return results  # type: ignore[return-value]


def assert_clean(results: list[tuple[str, str, str, str]]) -> None:
    bad = [r for r in results if r[2] not in ("ok", "error")]
    assert not bad, "\n".join(f"{t} {p}: {o}\n{d}" for t, p, o, d in bad[:5])
    for _t, _p, outcome, detail in results:
        if outcome == "error":
            assert detail and "\n" not in detail and "Traceback" not in detail, detail


# --- seeds and mutations ------------------------------------------------------------------


def seed_aci() -> bytes:
    """A small ACI with each entry kind the readers handle."""
    t = hostile.aci()
    t.dir("rootfs/etc").file("rootfs/etc/passwd", b"root:x:0:0::/:/bin/sh\n" * 40)
    t.file("rootfs/bin/tool", os.urandom(3000), mode=0o755)
    t.hardlink("rootfs/bin/tool2", "rootfs/bin/tool")
    t.symlink("rootfs/bin/sh", "tool")
    t.file("rootfs/x", b"x", pax={"SCHILY.xattr.user.k": "v", "comment": "c" * 300})
    return t.data()


def _blocks(tar: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each member's header plus data, from a plain tar."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        for m in t.getmembers():
            end = m.offset_data + ((m.size + 511) // 512) * 512 if m.isreg() else m.offset_data
            out.append((m.offset, end - m.offset))
    return out


def mutate(tar: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of a plain tar: which one, and the (possibly compressed) result."""
    kind = rng.choice(["truncate", "flip", "flip-header", "duplicate", "bogus-header",
                       "pax-record", "swap", "zero-block"])
    data = bytearray(tar)
    blocks = _blocks(tar)
    if kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "flip-header":
        offset, _ = rng.choice(blocks)
        for _ in range(rng.randint(1, 4)):
            data[offset + rng.randrange(512)] = rng.randrange(256)
    elif kind == "duplicate":
        offset, length = rng.choice(blocks)
        at = rng.choice(blocks)[0]
        data[at:at] = data[offset : offset + length]
    elif kind == "bogus-header":
        at = rng.choice(blocks)[0]
        header = hostile.raw_header(rng.choice(["rootfs/a", "../b", "/c", "rootfs/" + "d" * 99]),
                                    kind=rng.choice([b"0", b"5", b"1", b"2", b"x", b"L", b"K",
                                                     b"g", b"Z"]),
                                    size=rng.choice([0, 1, 511, 512, 10**6]),
                                    linkname=rng.choice(["", "rootfs/bin/tool", "../../etc"]),
                                    checksum=rng.random() < 0.7)
        data[at:at] = header
    elif kind == "pax-record":
        record = rng.choice([b"99999999999 path=x\n", b"30 size=99999999999999999999\n",
                             b"0 path=x\n", b"-5 path=x\n", b"17 mtime=nan\n",
                             b"20 uid=-1\n", b"garbage", b"12 path\n"])
        header = hostile.raw_header("pax", kind=b"x", size=len(record))
        at = rng.choice(blocks)[0]
        data[at:at] = header + record.ljust((len(record) + 511) // 512 * 512, b"\0")
    elif kind == "swap":
        (a, la), (b, lb) = sorted(rng.sample(blocks, 2))
        data = data[:a] + data[b : b + lb] + data[a + la : b] + data[a : a + la] + data[b + lb :]
    else:
        at = rng.choice(blocks)[0]
        data[at:at] = bytes(512)
    compression = rng.choice(["none", "gzip", "xz", "bzip2"])
    out = hostile.compress(bytes(data), compression)
    if rng.random() < 0.25 and compression != "none":
        out = out[: rng.randrange(1, len(out))]  # a compressed stream cut short
        kind += "+cut"
    return f"{kind}-{compression}", out


def test_mutated_acis_fail_cleanly_in_every_reader(tmp_path: Path) -> None:
    rng = random.Random(8)
    seed = seed_aci()
    jobs: list[tuple[str, Path]] = []
    for i in range(120):
        kind, data = mutate(seed, rng)
        path = hostile.write(tmp_path / f"{i:03d}-{kind}.aci", data)
        jobs += [("unpack_base", path), ("validate_image", path)]
    results = read_all(jobs)
    assert_clean(results)
    outcomes = {o for _t, _p, o, _d in results}
    assert outcomes == {"ok", "error"}  # the mutations reach both ends


def test_truncated_streams_at_every_length_are_errors(tmp_path: Path) -> None:
    seed = seed_aci()
    jobs: list[tuple[str, Path]] = []
    for compression in ("gzip", "xz", "bzip2", "none"):
        whole = hostile.compress(seed, compression)
        # a plain tar cut in the zero padding after its end-of-archive block is whole
        last = sum(_blocks(seed)[-1]) if compression == "none" else len(whole)
        for cut in sorted({1, 10, 100, 512, 1024, len(whole) // 2, last - 1}):
            if cut < len(whole):
                path = hostile.write(tmp_path / f"cut-{compression}-{cut}.aci", whole[:cut])
                jobs.append(("unpack_base", path))
    results = read_all(jobs)
    assert_clean(results)
    assert [o for _t, _p, o, _d in results] == ["error"] * len(jobs)


@pytest.fixture(scope="module")
def docker_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("docker")
    layout = ocifixtures.make_layout(work / "layout", "latest", [
        [ocifixtures.directory("bin"), ocifixtures.file("bin/a", b"a" * 2000, mode=0o755),
         ocifixtures.hardlink("bin/b", "bin/a"), ocifixtures.symlink("bin/c", "a")],
        [ocifixtures.whiteout("bin/c"), ocifixtures.file("etc/x", "x")],
    ], ocifixtures.Config(entrypoint=("/bin/a",)))
    return ocifixtures.to_docker_archive(layout, "latest", work / "img.tar", "example/img:1")


def test_mutated_docker_archives_fail_cleanly_in_convert(
    docker_archive: Path, tmp_path: Path
) -> None:
    rng = random.Random(3)
    seed = docker_archive.read_bytes()
    jobs: list[tuple[str, Path]] = [("docker-archive", docker_archive)]
    for i in range(40):
        kind, data = mutate(seed, rng)
        jobs.append(("docker-archive", hostile.write(tmp_path / f"{i:02d}-{kind}.tar", data)))
    results = read_all(jobs)
    assert_clean(results)
    assert results[0][2] == "ok", results[0]


# --- limits -----------------------------------------------------------------------------


def _unpack(path: Path, tmp: Path, limits: Limits = Limits()) -> None:  # noqa: B008
    root = tmp / "rootfs"
    root.mkdir()
    unpack_base(path, StagedRootfs(root=root), limits=limits)


def test_manifest_over_one_mib_is_refused(tmp_path: Path) -> None:
    big = hostile.write(tmp_path / "big.aci", hostile.aci(b" " * ((1 << 20) + 1)).data())
    with pytest.raises(ImageError) as info:
        _unpack(big, tmp_path)
    assert info.value.message == "manifest is larger than 1048576 bytes"
    assert "manifest is larger than 1048576 bytes" in validate_image(big)


def test_path_names_over_four_kib_are_refused(tmp_path: Path) -> None:
    name = "rootfs/" + "/".join(["d" * 200] * 21)  # 4227 bytes
    data = hostile.aci().file(name, b"x").data()
    path = hostile.write(tmp_path / "long.aci", data)
    with pytest.raises(ImageError) as info:
        _unpack(path, tmp_path)
    assert info.value.message.startswith("archive entry name is longer than 4096 bytes: ")
    assert any(p.startswith("archive entry name is longer than 4096") for p in validate_image(path))


def _gzip_bomb(path: Path, size: int) -> Path:
    """An ACI with one file of ``size`` zero bytes, gzip'd (a thousandth of that on disk)."""
    with gzip.open(path, "wb", compresslevel=9) as out:
        t = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        for name, body in (("manifest", json.dumps(hostile.MINIMAL_MANIFEST).encode()),):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
        info = tarfile.TarInfo("rootfs/zero")
        info.size = size

        class Zeros(io.RawIOBase):
            left = size

            def readable(self) -> bool:
                return True

            def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

        t.addfile(info, io.BufferedReader(Zeros()))
        t.close()
    return path


def test_tar_bomb_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    bomb = _gzip_bomb(tmp_path / "bomb.aci", 64 << 20)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageError) as info:
        _unpack(bomb, tmp_path, Limits(max_total_bytes=16 << 20))
    assert info.value.message == "image content is larger than the limit of 16777216 bytes"


def test_entry_count_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    t = hostile.aci()
    for i in range(50):
        t.dir(f"rootfs/d{i}")
    path = hostile.write(tmp_path / "many.aci", t.data())
    with pytest.raises(ImageError) as info:
        _unpack(path, tmp_path, Limits(max_entries=20))
    assert info.value.message == "archive has more than 20 entries"


def test_duplicate_entries_unpack_last_wins_and_validate_reports(tmp_path: Path) -> None:
    data = hostile.aci().file("rootfs/f", b"one").file("rootfs/f", b"two").data()
    path = hostile.write(tmp_path / "dup.aci", data)
    _unpack(path, tmp_path)
    assert (tmp_path / "rootfs" / "f").read_bytes() == b"two"
    assert "duplicate entry 'rootfs/f'" in validate_image(path)


def test_cli_exposes_max_image_size(tmp_path: Path) -> None:
    _gzip_bomb(tmp_path / "bomb.aci", 8 << 20)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Acfile").write_text("BEGIN ../bomb.aci\nNAME example.com/bomb\n")
    r = acbuild("build", "--max-image-size", "1M", tmp_path / "ctx" / "Acfile",
                "-o", tmp_path / "out.aci", "--allow-path", tmp_path)
    assert r.code == 1
    assert "image content is larger than the limit of 1048576 bytes" in r.stderr


def _header_bomb(path: Path, kind: bytes, size: int) -> Path:
    """A gzip'd tar whose first header (PAX 'x' or GNU long name 'L') claims ``size`` bytes
    of zeros: ~2 MB on disk, and tarfile reads the whole record into memory."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    with path.open("wb") as f:
        f.write(c.compress(hostile.raw_header("././@LongLink", kind=kind, size=size)))
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            f.write(c.compress(chunk))
        f.write(c.flush())
    return path


@pytest.mark.parametrize("kind", [b"x", b"L"], ids=["pax", "gnu-longname"])
def test_header_bombs_are_refused_without_reading_them(kind: bytes, tmp_path: Path) -> None:
    bomb = _header_bomb(tmp_path / f"bomb-{kind.decode()}.aci", kind, 640 << 20)
    results = read_all([("unpack_base", bomb), ("validate_image", bomb)])
    assert_clean(results)
    # unpack_base raises; validate_image returns its problems.
    assert [o for _t, _p, o, _d in results] == ["error", "ok"]
    assert any("extended header of" in p for p in validate_image(bomb))


def test_atheris_tar_target_short_run(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    from tests.acfile.test_fuzz_acfile import atheris_run

    atheris_run("fuzz_tar.py", runs=150, work=tmp_path)
