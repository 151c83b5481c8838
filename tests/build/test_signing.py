"""build.signing.UnsignedImage: a signing build's image, written and signed under a hidden
name, is held the whole time it is hidden (RT4-2: between its writing and its signing it was
not, and a build in another PID namespace, where this pid looks dead, swept it)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from acbuild.build.signing import UnsignedImage
from acbuild.errors import AcbuildError
from acbuild.fs.atomic import atomic_write

_SWEEP_ELSEWHERE = """
import sys
from pathlib import Path
from acbuild.fs.leftovers import sweep
print(len(sweep(Path(sys.argv[1]), "." + sys.argv[2] + ".", ".tmp")))
"""


def _sign(image: Path, key: str, signature: Path, shown: Path) -> None:
    assert image.read_bytes() == b"the image"
    with atomic_write(signature) as f:
        f.write(f"signed by {key}".encode())


def test_a_hidden_image_is_held_from_its_writing_to_its_publishing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("unshare --pid needs root")
    out = tmp_path / "x.aci"
    unsigned = UnsignedImage()
    try:
        hidden = unsigned.path_for(out)
        with atomic_write(hidden) as f:  # as the finalizer writes it
            f.write(b"the image")
        # the writer is done, the signing not begun: a sweep from another PID namespace
        r = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c",
                            _SWEEP_ELSEWHERE, str(tmp_path), out.name],
                           capture_output=True, text=True, cwd=Path(__file__).parents[2],
                           check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["0"]
        assert unsigned.publish(_sign, "alice") == tmp_path / "x.aci.asc"
    finally:
        unsigned.discard()
    assert out.read_bytes() == b"the image"
    assert (tmp_path / "x.aci.asc").read_bytes() == b"signed by alice"
    assert sorted(os.listdir(tmp_path)) == ["x.aci", "x.aci.asc"]


def test_what_a_killed_signing_build_left_is_swept_by_the_next(tmp_path: Path) -> None:
    out = tmp_path / "x.aci"
    code = ("import sys, os\nfrom pathlib import Path\n"
            "from acbuild.build.signing import UnsignedImage\n"
            "p = UnsignedImage().path_for(Path(sys.argv[1]))\n"
            "p.write_bytes(b'half')\nprint(p, flush=True)\nos.kill(os.getpid(), 9)\n")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                       cwd=Path(__file__).parents[2], check=False)
    assert r.returncode == -9
    assert Path(r.stdout.strip()).read_bytes() == b"half"  # the premise: left behind
    unsigned = UnsignedImage()
    try:
        unsigned.path_for(out)
        assert len(os.listdir(tmp_path)) == 1  # only this build's own hidden directory
    finally:
        unsigned.discard()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("at", ["image", "signature"])
def test_a_fifo_made_at_the_output_while_signing_stays(tmp_path: Path, at: str) -> None:
    """Red team RO-3: publish unlinked and renamed over the output and IMAGE.asc unchecked:
    a device or FIFO put there during a long build (or there before, at the default name,
    RO-7) was destroyed."""
    out = tmp_path / "x.aci"
    unsigned = UnsignedImage()

    def sign_and_swap(image: Path, key: str, signature: Path, shown: Path) -> None:
        _sign(image, key, signature, shown)
        os.mkfifo(out if at == "image" else tmp_path / "x.aci.asc")

    try:
        with atomic_write(unsigned.path_for(out)) as f:
            f.write(b"the image")
        with pytest.raises(AcbuildError, match="it is a FIFO, which is never replaced"):
            unsigned.publish(sign_and_swap, "alice")
    finally:
        unsigned.discard()
    fifo = out if at == "image" else tmp_path / "x.aci.asc"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(tmp_path) == [fifo.name]


@pytest.mark.parametrize("after", ["mkdir", "new_held_dir", "hold"])
def test_a_signal_while_the_hidden_directory_is_made_leaves_nothing(
        tmp_path: Path, after: str) -> None:
    """SIGTERM raised (as a build's handler raises it) the instant the hidden directory
    exists but before the build has recorded it: the directory is still removed."""
    from acbuild.signals import Terminated, owned, terminate_as_exit

    out = tmp_path / "x.aci"

    def interrupt(frame: object, event: str, arg: object) -> None:
        code = getattr(frame, "f_code", None)
        if event in ("return", "c_return") and (
                getattr(code, "co_name", None) == after or getattr(arg, "__name__", None) == after):
            sys.setprofile(None)
            os.kill(os.getpid(), 15)

    with terminate_as_exit(), pytest.raises(Terminated), \
            owned(UnsignedImage, UnsignedImage.discard) as unsigned:
        sys.setprofile(interrupt)
        try:
            unsigned.path_for(out)
        finally:
            sys.setprofile(None)
        raise AssertionError("the signal was not raised")  # pragma: no cover
    assert sorted(p.name for p in tmp_path.iterdir()) == []
