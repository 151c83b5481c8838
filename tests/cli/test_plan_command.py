"""The plan verb: steps with their keys, HIT or MISS, without running anything."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.cli import acbuild

LINE = re.compile(r"^\[(\d)/7\] (HIT |MISS) (sha256:[0-9a-f]{64})  (.*)$")


def plan_lines(acfile: Path, cache: Path, *extra: str) -> list[re.Match[str]]:
    r = acbuild("plan", acfile, "--cache-dir", cache, *extra)
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"image (HIT |MISS) sha256:[0-9a-f]{64}", lines[-1]), lines[-1]
    found = [LINE.match(line) for line in lines[:-1]]
    assert all(found), lines
    return [m for m in found if m is not None]


def test_plan_before_and_after_a_build(hello_context: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    acfile = hello_context / "Acfile"
    before = plan_lines(acfile, cache)
    assert [m[2] for m in before] == ["MISS"] * 7
    assert before[5][4] == "COPY hello /bin/hello"
    assert not list((cache / "steps").iterdir())  # planning stored nothing
    assert acbuild("build", acfile, "-o", tmp_path / "h.aci", "--cache-dir", cache).code == 0
    after = plan_lines(acfile, cache)
    # The image's last COPY and the EXEC after it keep no snapshot: the image is cached.
    assert [m[2] for m in after] == ["HIT "] * 5 + ["MISS"] * 2
    assert [m[3] for m in after] == [m[3] for m in before]
    r = acbuild("plan", acfile, "--cache-dir", cache)
    assert r.stdout.splitlines()[-1].startswith("image HIT ")
    # Another compression is another image, with the same steps.
    assert acbuild("plan", acfile, "--cache-dir", cache, "--compression", "xz"
                   ).stdout.splitlines()[-1].startswith("image MISS")
    (hello_context / "hello").write_bytes(b"#!/bin/sh\n")
    changed = plan_lines(acfile, cache)
    assert [m[2] for m in changed] == ["HIT "] * 5 + ["MISS"] * 2


def test_plan_reports_acfile_errors(tmp_path: Path) -> None:
    (tmp_path / "Acfile").write_text("BEGIN scratch\nFROB x\n")
    r = acbuild("plan", tmp_path / "Acfile", "--cache-dir", tmp_path / "cache")
    assert r.code == 1 and "Acfile:2:1" in r.stderr
