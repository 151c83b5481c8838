"""Cases an outside audit of the merged security work found, each once an internal error or
an unbounded resource; each must now be a one-line error at its place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.busybox import BUSYBOX, busybox_available
from tests.support.cli import acbuild
from tests.support.hostile import aci, write

HUGE = "1" + "0" * 5000  # more digits than Python converts to an int


def test_a_template_bomb_never_grows_the_parent(tmp_path: Path) -> None:
    # jinja2.meta compiled the template in the parent, folding [1]*10**8 there (800 MB)
    # before the confined render refused it; the parent must stay small.
    acfile = tmp_path / "Acfile"
    acfile.write_text('BEGIN scratch\nNAME example.com/t\nLABEL x="{{ [1]*10**8 }}"\n')
    with (tmp_path / "err").open("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "acbuild", "plan", str(acfile)],
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this process tree's peak, no other's
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    peak_kib = usage.ru_maxrss
    assert proc.returncode == 1, stderr
    assert "Acfile:3:" in stderr and "too large" in stderr and "Traceback" not in stderr
    assert peak_kib < 400 * 1024, f"a process of the plan grew to {peak_kib // 1024} MiB"


def test_a_manifest_number_too_long_to_read_is_an_error(tmp_path: Path) -> None:
    image = tmp_path / "n.aci"
    t = aci({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/n"})
    data = t.data().replace(b'"name": "example.com/n"}', b'"name": "example.com/n", "x": '
                            + HUGE.encode() + b"}")
    assert HUGE.encode() in data
    write(image, data)
    for verb in ("inspect", "manifest", "validate"):
        r = acbuild(verb, image)
        assert r.code in (1, 2) and "internal error" not in r.stderr, (verb, r.stderr)


@pytest.mark.parametrize("line", [
    f"RUN --pids={HUGE} /x", f"RUN --memory={HUGE} /x", 'EXEC ["/x\\ud800"]',
    'RUN ["/x", "\\udfff"]',
])
def test_acfile_words_no_program_can_take_are_errors_at_their_place(tmp_path: Path,
                                                                     line: str) -> None:
    (tmp_path / "Acfile").write_text(f"BEGIN scratch\nNAME example.com/t\n{line}\n")
    r = acbuild("plan", tmp_path / "Acfile")
    assert r.code == 1, r.stderr
    assert "Acfile:3:" in r.stderr and "internal error" not in r.stderr


@pytest.mark.skipif(not busybox_available(), reason="busybox-static is not installed")
@pytest.mark.parametrize("line", [
    f"COPY --chown={HUGE}:0 busybox /x", f"RUN --user={HUGE} /busybox true",
    "RUN --user=4294967295 /busybox true",  # -1 to setresuid: would have stayed root
])
def test_ids_no_user_can_have_are_errors(tmp_path: Path, line: str) -> None:
    (tmp_path / "busybox").write_bytes(BUSYBOX.read_bytes())
    (tmp_path / "Acfile").write_text("BEGIN scratch\nNAME example.com/t\n"
                                     f"COPY --mode=0755 busybox /busybox\n{line}\n")
    r = acbuild("build", "--no-cache", tmp_path / "Acfile", "-o", tmp_path / "x.aci")
    assert r.code == 1, r.stderr
    assert "out of range" in r.stderr and "internal error" not in r.stderr
    assert not (tmp_path / "x.aci").exists()


def test_a_file_that_is_no_archive_is_named_once_by_every_verb(tmp_path: Path) -> None:
    junk = tmp_path / "junk.aci"
    junk.write_text("not an image\n")
    for verb in (("inspect", junk), ("manifest", junk), ("diff", junk, junk),
                 ("validate", junk), ("run", junk)):
        r = acbuild(*verb)
        assert r.code != 0, verb
        assert f"{junk}: not a tar archive" in r.stderr, (verb, r.stderr)
        assert r.stderr.count(str(junk)) == 1, (verb, r.stderr)
