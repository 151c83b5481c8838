"""Control characters and rich markup from images, manifests and RUN output never reach the
terminal as they are: inspect, diff, manifest, validate, errors and every reporter escape them."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from acbuild.cli.console import JsonReporter, PlainReporter
from acbuild.cli.tty import TtyReporter
from acbuild.report import StepInfo
from tests.support.cli import acbuild
from tests.support.hostile import MINIMAL_MANIFEST, aci, compress, write

OSC8 = "\x1b]8;;https://evil.example/\x07click\x1b]8;;\x07"
CSI = "\x1b[2J\x1b[31m"
C1 = "\x9b1m"
LINK = "\x1b]8;;x\x07click\x1b]8;;\x07"  # an OSC 8 hyperlink that fits in a file name
BAD = ("\x1b", "\x9b", "\x07", "\x7f")


def hostile_image(path: Path, *, label: str = CSI + OSC8 + C1 + "\x7f[bold]x[/bold]") -> Path:
    manifest = {**MINIMAL_MANIFEST,
                "labels": [*MINIMAL_MANIFEST["labels"],  # type: ignore[misc]
                           {"name": "version", "value": label}],
                "annotations": [{"name": "authors", "value": OSC8}]}
    tar = (aci(manifest).dir(f"rootfs/{CSI}dir").file(f"rootfs/{CSI}dir/{LINK}", b"x")
           .symlink("rootfs/[bold]link[red]", "/\x1b]52;c;aGk=\x07").data())
    return write(path, compress(tar))


def assert_clean(text: str) -> None:
    for ch in BAD:
        assert ch not in text, f"{ch!r} reached the terminal: {text!r}"


def test_inspect_escapes_names_values_and_markup(tmp_path: Path) -> None:
    r = acbuild("inspect", hostile_image(tmp_path / "x.aci"))
    assert r.code == 0, r.stderr
    assert_clean(r.stdout + r.stderr)
    assert "\\x1b[2J\\x1b[31m" in r.stdout and "\\x1b]8;;https://evil.example/\\x07" in r.stdout
    assert "\\x9b1m\\x7f[bold]x[/bold]" in r.stdout  # markup shown, not interpreted
    assert "[bold]link[red] -> /\\x1b]52;c;aGk=\\x07" in r.stdout
    assert "\\x1b]8;;x\\x07click\\x1b]8;;\\x07 1 B" in r.stdout


def test_diff_escapes_paths_and_manifest_values(tmp_path: Path) -> None:
    old = hostile_image(tmp_path / "old.aci", label="1")
    new = hostile_image(tmp_path / "new.aci")
    r = acbuild("diff", old, new)
    assert r.code == 1, r.stderr
    assert_clean(r.stdout + r.stderr)
    assert '\\u009b1m\\u007f[bold]x[/bold]' in r.stdout
    j = acbuild("diff", "--json", old, new)
    assert_clean(j.stdout)
    doc = json.loads(j.stdout)
    assert doc["manifest"][0]["new"] == CSI + OSC8 + C1 + "\x7f[bold]x[/bold]"


def test_manifest_prints_valid_json_with_controls_as_u_escapes(tmp_path: Path) -> None:
    r = acbuild("manifest", hostile_image(tmp_path / "x.aci"))
    assert r.code == 0, r.stderr
    assert_clean(r.stdout)
    labels = json.loads(r.stdout)["labels"]
    assert labels[-1]["value"] == CSI + OSC8 + C1 + "\x7f[bold]x[/bold]"


def test_validate_and_errors_escape_names_from_images(tmp_path: Path) -> None:
    manifest = {**MINIMAL_MANIFEST, "name": "example.com/\x1b]0;pwned\x07"}
    image = write(tmp_path / f"{CSI}.aci", compress(aci(manifest).data()))
    r = acbuild("validate", image)
    assert r.code == 1
    assert_clean(r.stderr)
    assert "\\x1b]0;pwned\\x07" in r.stderr
    missing = acbuild("inspect", tmp_path / f"{OSC8}.aci")
    assert missing.code == 1
    assert_clean(missing.stderr)
    assert "Traceback" not in missing.stderr


STEP = StepInfo(number=1, total=1, text=f"RUN echo {CSI}[bold]")
OUTPUT = f"10%\r100% {OSC8}\tdone{C1}\b!"


def test_tty_reporter_interprets_cr_and_backspace_and_escapes_the_rest() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200, highlight=False, emoji=False)
    r = TtyReporter(console=console)
    r.step_started(STEP)
    r.step_output(STEP, OUTPUT)
    r.info(f"info {OSC8}")
    r.warning(f"warn [red]{C1}")
    r.close()
    text = out.getvalue()
    assert_clean(text)
    assert "RUN echo \\x1b[2J\\x1b[31m[bold]" in text
    # the step was still running when the reporter closed: it failed, its output is shown
    assert " => => # 100% \\x1b]8;;https://evil.example/\\x07click\\x1b]8;;\\x07     done" \
        "\\x9b1!" in text
    assert "warn [red]\\x9b1m" in text


def test_plain_and_json_reporters_escape_what_runs_print() -> None:
    plain = io.StringIO()
    PlainReporter(plain).step_output(STEP, OUTPUT)
    assert_clean(plain.getvalue())
    assert plain.getvalue() == \
        "[1/1] | 10%\\r100% \\x1b]8;;https://evil.example/\\x07click\\x1b]8;;\\x07" \
        "\\tdone\\x9b1m\\x08!\n"
    out = io.StringIO()
    JsonReporter(out).step_output(STEP, OUTPUT + "\udcff")
    assert_clean(out.getvalue())
    assert json.loads(out.getvalue())["line"] == OUTPUT + "\udcff"


def test_usage_errors_escape_the_value_they_quote(tmp_path: Path) -> None:
    name = tmp_path / f"{CSI}dir"
    name.mkdir()
    r = acbuild("diff", name, name)
    assert r.code == 2
    assert_clean(r.stderr)
    assert "\\x1b[2J\\x1b[31mdir' is a directory" in r.stderr
