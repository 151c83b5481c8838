"""Independent stages build side by side (acbuild.build.schedule): at the same time, with the
same image whatever order they finish in, and a failure stops the others cleanly."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.busybox import BUSYBOX
from tests.support.cli import acbuild
from tests.support.procfs import processes_with
from tests.support.sandboxrun import needs_sandbox

pytestmark = needs_sandbox


def two_stages(tmp_path: Path, run_a: str, run_b: str, name: str = "Acfile") -> Path:
    """Stages a and b, each with one RUN, and a last stage copying a file from each."""
    ctx = tmp_path / "ctx"
    base = ctx / "base" / "bin"
    if not base.exists():
        base.mkdir(parents=True)
        # The smallest base a RUN can use: a copied base is quick to stage.
        shutil.copy2(BUSYBOX, base / "busybox")
        (base / "sh").symlink_to("busybox")
        (base / "sleep").symlink_to("busybox")
    acfile = ctx / name
    acfile.write_text(
        "BEGIN ./base AS a\n"
        f'RUN /bin/sh -c "{run_a}"\n'
        "BEGIN ./base AS b\n"
        f'RUN /bin/sh -c "{run_b}"\n'
        "BEGIN scratch\n"
        "NAME example.com/parallel\n"
        "COPY --from=a /a.txt /a.txt\n"
        "COPY --from=b /b.txt /b.txt\n")
    return acfile


# Two 2 s stages one after the other would take 5 s with the build around them, and the
# bound is 5.5 s: alone (.ci/run's serial part), so that other tests' load does not
# decide.
@pytest.mark.serial
def test_independent_stages_run_at_the_same_time(tmp_path: Path) -> None:
    acfile = two_stages(tmp_path, "sleep 2; echo a > /a.txt", "sleep 2; echo b > /b.txt")
    started = time.monotonic()
    r = acbuild("--progress", "plain", "build", acfile, "-o", tmp_path / "out.aci",
                "--no-cache", "-j", "2")
    took = time.monotonic() - started
    assert r.code == 0, r.stderr
    lines = r.stderr.splitlines()
    runs = [i for i, line in enumerate(lines) if re.match(r"\[[24]/9\] RUN ", line)]
    dones = [i for i, line in enumerate(lines) if re.match(r"\[[24]/9\] DONE ", line)]
    assert len(runs) == 2 and len(dones) == 2
    assert max(runs) < min(dones), r.stderr  # both RUNs started before either ended
    assert took < 2 * 2 + 1.5, took  # not one after the other
    for line in lines:  # every line whole: a tag and a known word, or the summary
        assert re.match(r"\[\d+/9\] (DONE \d|CACHED|\| |BEGIN|RUN|NAME|COPY|WRITE)", line) \
            or not line.startswith("["), line


def test_one_job_builds_one_stage_at_a_time(tmp_path: Path) -> None:
    acfile = two_stages(tmp_path, "sleep 1; echo a > /a.txt", "sleep 1; echo b > /b.txt")
    r = acbuild("--progress", "plain", "build", acfile, "-o", tmp_path / "out.aci",
                "--no-cache", "-j", "1")
    assert r.code == 0, r.stderr
    tags = [line.split()[0] for line in r.stderr.splitlines() if line.startswith("[")]
    assert tags[:4] == ["[1/9]", "[1/9]", "[2/9]", "[2/9]"], tags  # stage a to its end first


def test_the_image_id_does_not_depend_on_which_stage_finishes_first(tmp_path: Path) -> None:
    ids = set()
    for slow_a in (True, False):
        acfile = two_stages(tmp_path, f"sleep {1 if slow_a else 0}; echo a > /a.txt",
                            f"sleep {0 if slow_a else 1}; echo b > /b.txt")
        for jobs in ("1", "2"):
            r = acbuild("-q", "build", acfile, "-o", tmp_path / "out.aci", "--no-cache",
                        "-j", jobs)
            assert r.code == 0, r.stderr
            ids.add(r.stdout.strip())
    assert len(ids) == 1, ids


def test_a_failing_stage_stops_the_others_cleanly(tmp_path: Path) -> None:
    # A command line no other test runs, nor this test in another run on the machine.
    marker = f"sleep 47.25{os.getpid()}"
    acfile = two_stages(tmp_path, f"{marker}; echo a > /a.txt", "sleep 0.5; exit 3")
    out = tmp_path / "out.aci"
    started = time.monotonic()
    r = acbuild("build", acfile, "-o", out, "--no-cache", "-j", "2",
                env={"TMPDIR": str(tmp_path)})
    took = time.monotonic() - started
    assert r.code != 0
    assert "RUN failed with exit status 3" in r.stderr
    assert "Traceback" not in r.stderr and "exit status 143" not in r.stderr
    assert took < 20, took  # the 47 s sleep was stopped
    assert not out.exists()
    assert processes_with(marker.encode()) == []
    assert os.listdir(tmp_path / f"acbuild-py-{os.geteuid()}") == []  # no work directory


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["sigint", "sigterm"])
def test_an_interrupt_stops_every_running_stage(tmp_path: Path, sig: signal.Signals,
                                                status: int) -> None:
    marker = f"sleep 53.{int(sig)}{os.getpid()}"  # this run's only: counted below
    acfile = two_stages(tmp_path, f"{marker}; echo a > /a.txt", f"{marker}; echo b > /b.txt")
    out = tmp_path / "out.aci"
    proc = subprocess.Popen(
        [sys.executable, "-m", "acbuild", "build", str(acfile), "-o", str(out), "--no-cache",
         "-j", "2"], env={**os.environ, "CI": "true", "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(processes_with(marker.encode())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # both sleeps running
        assert len(processes_with(marker.encode())) == 2
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:  # a failed test must not leave the build running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == status, err.decode()
    assert b"Traceback" not in err
    assert processes_with(marker.encode()) == []
    assert not out.exists()
    assert os.listdir(tmp_path / f"acbuild-py-{os.geteuid()}") == []


def test_json_log_of_a_parallel_build_fits_the_schema(tmp_path: Path) -> None:
    import json

    import jsonschema

    schema = json.loads((Path(__file__).parents[2] / "docs" / "logs.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    acfile = two_stages(tmp_path, "sleep 1; echo a; echo a > /a.txt",
                        "sleep 1; echo b; echo b > /b.txt")
    r = acbuild("--progress", "json", "build", acfile, "-o", tmp_path / "out.aci",
                "--no-cache", "-j", "2")
    assert r.code == 0, r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines()]
    for event in events:
        errors = list(validator.iter_errors(event))
        assert not errors, (event, errors[0].message)
    started = [e["step"] for e in events if e["event"] == "step-started"]
    finished = [e["step"] for e in events if e["event"] == "step-finished"]
    assert sorted(started) == sorted(finished) == list(range(1, 10))
    output = {e["line"]: e["step"] for e in events if e["event"] == "step-output"}
    assert output == {"a": 2, "b": 4}  # each line with the step that printed it
