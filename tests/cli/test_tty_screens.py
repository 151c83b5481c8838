"""The tty log as a person sees it: the real CLI in a pseudo-terminal, its screen read back
through a terminal emulator (pyte), at 80 and 120 columns."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest

from acbuild.report import NullReporter
from acbuild.trust.sign import sign_image
from acbuild.trust.truststore import TrustStore
from tests.conftest import EXAMPLES
from tests.support.busybox import BUSYBOX, busybox_available
from tests.support.cli import acbuild
from tests.support.gpghelp import Keys, make_aci
from tests.support.httpserver import Server
from tests.support.terminal import Screen, run_in_terminal

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys, http_server

WIDTHS = (80, 120)
STEP = re.compile(r"^ => (CACHED |ERROR )?\[\d+/\d+\] .* +\d+\.\ds$")
needs_busybox = pytest.mark.skipif(not busybox_available(),
                                   reason="busybox-static is not installed")


def _busybox_context(tmp_path: Path, acfile: str) -> Path:
    """A context holding the static busybox and ``acfile``."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy2(BUSYBOX, ctx / "busybox")
    (ctx / "Acfile").write_text(acfile)
    return ctx


def _folded(screen: Screen, columns: int, steps: int) -> list[str]:
    """The finished build's screen: the header, one line a step, no tail, no bars."""
    lines = [*screen.history, *screen.lines]
    header = next(i for i, line in enumerate(lines) if line.startswith("[+] Building "))
    assert re.fullmatch(rf"\[\+\] Building \d+\.\ds \({steps}/{steps}\) FINISHED",
                        lines[header]), lines[header]
    step_lines = lines[header + 1 : header + 1 + steps]
    assert all(STEP.match(line) for line in step_lines), "\n".join(step_lines)
    assert not any(" => => # " in line for line in lines), "a RUN's output was not folded"
    assert not any("ETA" in line or "/s" in line.split()[-1:] for line in lines)
    assert all(len(line) <= columns for line in lines)
    return step_lines


@pytest.mark.parametrize("columns", WIDTHS)
def test_hello_folds_every_step_and_a_rebuild_is_cached(hello_context: Path, tmp_path: Path,
                                                        columns: int) -> None:
    out = tmp_path / "h.aci"
    first = run_in_terminal("build", hello_context / "Acfile", "-o", out, columns=columns)
    assert first.code == 0, first.text
    steps = _folded(first, columns, 8)
    assert steps[-1].startswith(" => [8/8] WRITE ")
    again = run_in_terminal("build", hello_context / "Acfile", "-o", out, columns=columns)
    steps = _folded(again, columns, 8)
    assert all(line.startswith(" => CACHED ") for line in steps)
    assert any(line.startswith("image ID ") for line in again.lines)
    assert len(again.lines) <= 20  # header, 8 steps, 9 summary rows
    assert re.fullmatch(rb"sha512-[0-9a-f]{128}\n", again.stdout)


@needs_busybox
@pytest.mark.parametrize("columns", WIDTHS)
def test_busybox_app_shows_a_bounded_tail_while_running(tmp_path: Path, columns: int) -> None:
    base = tmp_path / "busybox"
    shutil.copytree(EXAMPLES / "busybox", base)
    shutil.copy2(BUSYBOX, base / "busybox")
    app = tmp_path / "busybox-app"
    shutil.copytree(EXAMPLES / "busybox-app", app)
    assert acbuild("build", "-q", base / "Acfile", "-o", app / "busybox.aci").code == 0
    (app / "Acfile").write_text((app / "Acfile").read_text().replace(
        "EXEC", "RUN /bin/sh -c 'i=0; while [ $i -lt 40 ]; do echo \"tick $i\"; "
        "printf \"progress 10%%\\r progress 99%%\\n\"; i=$((i+1)); sleep 0.02; done'\nEXEC", 1))
    tails: list[int] = []

    def watch(rows: list[str]) -> None:
        tails.append(sum(1 for row in rows if row.startswith(" => => # ")))
        tail = [row for row in rows if row.startswith(" => => # ")]
        assert not any("progress 10%" in row for row in tail), "\\r was not applied"

    screen = run_in_terminal("build", app / "Acfile", "-o", tmp_path / "app.aci",
                             columns=columns, watch=watch)
    assert screen.code == 0, screen.text
    assert max(tails) > 0, "the running step's output was never shown"
    assert max(tails) <= 6
    _folded(screen, columns, 13)


@needs_busybox
@pytest.mark.parametrize("columns", WIDTHS)
def test_a_progress_bar_redrawn_with_cr_shows_its_latest_state_while_it_runs(
        tmp_path: Path, columns: int) -> None:
    # A download bar as curl or pip draw it: no newline until the end, \r before each state.
    ctx = _busybox_context(
        tmp_path,
        "BEGIN scratch\nNAME example.com/bar\nCOPY --mode=0755 busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "sh", "-c", "for i in 10 20 30 40 50 60 70 80 90; do '
        'printf \\"\\\\rdownloading $i%%\\"; sleep 0.25; done; echo; echo fetched"]\n')
    tails: list[str] = []

    def watch(rows: list[str]) -> None:
        tails.extend(row for row in rows if row.startswith(" => => # "))

    screen = run_in_terminal("build", ctx / "Acfile", "-o", tmp_path / "bar.aci",
                             columns=columns, watch=watch)
    assert screen.code == 0, screen.text
    states = {row for row in tails if "downloading" in row}
    assert any(re.fullmatch(r" => => # downloading [1-8]0%", row) for row in states), \
        f"the bar was not shown while it ran: {sorted(set(tails))}"
    assert all(row.count("downloading") == 1 for row in states), sorted(states)
    _folded(screen, columns, 5)


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A context whose Acfile copies 20000 files; made once, the builds only read it."""
    ctx = tmp_path_factory.mktemp("many") / "ctx"
    tree = ctx / "tree"
    for d in range(100):
        (tree / f"d{d:03}").mkdir(parents=True)
        for f in range(200):
            (tree / f"d{d:03}" / f"f{f:03}").write_bytes(b"x" * 64)
    (ctx / "Acfile").write_text("BEGIN scratch\nNAME example.com/many\nCOPY tree/ /srv/\n")
    return ctx


@pytest.mark.parametrize("columns", WIDTHS)
def test_a_20000_file_copy_leaves_no_bars(many_files: Path, tmp_path: Path,
                                          columns: int) -> None:
    screen = run_in_terminal("build", many_files / "Acfile", "-o", tmp_path / "many.aci",
                             columns=columns)
    assert screen.code == 0, screen.text
    _folded(screen, columns, 4)
    assert "20000" in screen.text or "20100" in screen.text  # the entries row


@needs_busybox
@pytest.mark.parametrize("columns", WIDTHS)
def test_a_failing_run_keeps_its_output_on_screen(tmp_path: Path, columns: int) -> None:
    ctx = _busybox_context(
        tmp_path,
        "BEGIN scratch\nNAME example.com/fails\nCOPY --mode=0755 busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "sh", "-c", "echo about to fail; echo \\"\\u001b]0;owned\\u0007'
        'title\\"; exit 7"]\n')
    screen = run_in_terminal("build", ctx / "Acfile", "-o", tmp_path / "x.aci",
                             columns=columns)
    assert screen.code == 1
    text = screen.text
    assert re.search(r"\[\+\] Building \d+\.\ds \(3/5\) FAILED", text), text
    assert re.search(r"^ => ERROR \[4/5\] RUN ", text, re.M)
    assert " => => # about to fail" in text
    assert "\\x1b]0;owned\\x07title" in text  # escaped, not obeyed
    assert b"\x1b]0;owned" not in screen.raw
    # The error line starts with the Acfile's path, so where the terminal wraps it depends on
    # the length of the test's temporary directory.
    assert "RUN failed with exit status 7" in " ".join(text.split())
    assert not (tmp_path / "x.aci").exists()


@needs_busybox
@pytest.mark.parametrize("columns", WIDTHS)
def test_run_prints_only_the_app(tmp_path: Path, columns: int) -> None:
    ctx = _busybox_context(
        tmp_path,
        "BEGIN scratch\nNAME example.com/app\nLABEL version=1\n"
        "COPY --mode=0755 busybox /bin/busybox\n"
        'EXEC ["/bin/busybox", "echo", "hello from the app"]\n')
    image = tmp_path / "app.aci"
    assert acbuild("build", "-q", ctx / "Acfile", "-o", image).code == 0
    for _ in range(2):  # cold, then warm
        screen = run_in_terminal("run", image, columns=columns)
        assert screen.code == 0, screen.text
        assert b"hello from the app" in screen.stdout
        assert not any("ETA" in line or "extract" in line for line in screen.lines)
    assert screen.lines == ()  # warm: nothing of its own on the terminal


@pytest.mark.parametrize("env", [{"LC_ALL": "C"}, {"LANG": "C"}, {"LANG": "en_US.ISO-8859-1"},
                                 {"TERM": "dumb"}])
def test_a_terminal_without_utf8_gets_ascii_only(tmp_path: Path, env: dict[str, str]) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "caf\u00e9").mkdir(parents=True)
    (ctx / "caf\u00e9" / "na\u00efve").write_text("x")
    (ctx / "Acfile").write_text("BEGIN scratch\nNAME example.com/ascii\n"
                                f"COPY caf\u00e9 /srv/{'long-' * 16}caf\u00e9\n")
    utf8 = run_in_terminal("build", ctx / "Acfile", "-o", tmp_path / "u.aci")
    assert utf8.code == 0, utf8.text
    assert "\u2026" in utf8.text and "caf\u00e9" in utf8.text  # what ASCII must do without
    for verb, expect in ((("build", ctx / "Acfile", "-o", tmp_path / "a.aci"), "caf\\xe9"),
                         (("inspect", tmp_path / "u.aci"), "`-- na\\xefve"),
                         (("build", "--tag", "x"), "version=... lines")):
        screen = run_in_terminal(*verb, env=env, stdout_tty=True)
        assert screen.raw.isascii(), (verb, {c for c in screen.raw.decode() if ord(c) > 127})
        assert expect in screen.text, screen.text


def test_errors_are_red_on_a_colour_terminal_only(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "Acfile"
    red = run_in_terminal("build", "-f", missing)
    assert red.code == 1
    assert b"\x1b[1;31merror:\x1b[0m" in red.raw
    assert any(line.startswith("error: Acfile not found") for line in red.lines), red.lines
    plain = run_in_terminal("build", "-f", missing, env={"NO_COLOR": "1"})
    assert plain.code == 1 and b"\x1b[" not in plain.raw.replace(b"\x1b[?25", b"")
    usage = run_in_terminal("biuld")
    assert usage.code == 2 and b"\x1b[1;31mError:\x1b[0m No such command 'biuld'" in usage.raw
    usage = run_in_terminal("biuld", env={"NO_COLOR": "1"})
    assert usage.code == 2 and b"\x1b[" not in usage.raw.replace(b"\x1b[?25", b"")


@pytest.mark.parametrize("columns", WIDTHS)
def test_fetch_shows_a_bar_while_downloading_and_leaves_none(tmp_path: Path, columns: int,
                                                               http_server: Server,
                                                               gpgkeys: Keys) -> None:
    name = "127.0.0.1/app"
    (http_server.root / "app").mkdir()
    image = make_aci(http_server.root / "app/app-1.0.aci", name, {"version": "1.0"},
                     payload=random.Random(1).randbytes(3 << 20))
    sign_image(image, gpgkeys.fpr["alice"], gpg_home=gpgkeys.home, reporter=NullReporter())
    (http_server.root / "app/index.html").write_text(
        f'<meta name="ac-discovery" '
        f'content="{name} {http_server.url}/app/app-{{version}}.{{ext}}">')
    http_server.behaviour.paced["/app/app-1.0.aci"] = 0.04  # about 2 s: the bar is seen
    trust = TrustStore(tmp_path / "trust")
    trust.add(gpgkeys.pub["alice"].read_bytes(), prefix=name)
    seen: list[str] = []

    def watch(rows: list[str]) -> None:
        seen.extend(row for row in rows if "%" in row)

    screen = run_in_terminal("fetch", f"{name}:1.0", "--insecure", "--port",
                             str(http_server.port), "--trust-store", trust.root,
                             "--store", tmp_path / "images", columns=columns, watch=watch)
    assert screen.code == 0, screen.text
    assert screen.stdout.decode().strip().startswith("sha512-")
    assert any(re.search(r"\b\d{1,3}%", row) for row in seen), "no bar with a percentage"
    assert all(len(row) <= columns for row in seen)
    lines = [*screen.history, *screen.lines]
    assert not any("%" in line or "ETA" in line for line in lines), "a bar was left behind"
    assert lines, "fetch said nothing of what it verified"
