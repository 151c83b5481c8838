"""The template renderer runs in a forked child under memory, CPU and wall-clock limits."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from acbuild.acfile.confine import LimitExceeded, Limits, run_confined
from acbuild.acfile.render import RENDER_MEMORY, render
from acbuild.errors import AcfileError

REPO = Path(__file__).resolve().parents[2]


def _render_error(expression: str) -> AcfileError:
    text = f"BEGIN scratch\nNAME example.com/x\nLABEL a={{{{ {expression} }}}}\n"
    with pytest.raises(AcfileError) as caught:
        render(text, file="Acfile", variables={})
    return caught.value


# Each of these makes one gigabyte-sized string in a single C call, past every check
# that looks at operators (the old bounds let them allocate, then refused the output).
@pytest.mark.parametrize("expression", [
    "'{:>1000000000}'.format(1)",
    "'%0*d' % (10**9, 1)",
    "'%*s' % (10**9, 'a')",
    "'a'.ljust(10**9)",
    "'a' | center(10**9)",
    "'a'.zfill(10**9)",
    "'a\\nb' | indent(10**9)",
    "('\\t' * 1000) .expandtabs(10**6)",
])
def test_single_call_memory_bombs_stop_at_the_memory_limit(expression: str) -> None:
    started = time.monotonic()
    err = _render_error(expression)
    assert err.message == \
        f"template rendering exceeded the memory limit ({RENDER_MEMORY >> 20} MiB)"
    assert err.span is not None and err.span.line == 3  # the first line with a tag
    assert time.monotonic() - started < 10


def test_limits_hold_when_rendering_from_another_thread() -> None:
    errors: list[AcfileError] = []

    def work() -> None:
        try:
            render("{{ '%0*d' % (10**9, 1) }}", file="Acfile", variables={})
        except AcfileError as e:
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert [e.message for e in errors] == \
        [f"template rendering exceeded the memory limit ({RENDER_MEMORY >> 20} MiB)"]


def test_errors_keep_their_place_through_the_child() -> None:
    text = "BEGIN scratch\n{% for x in [1] %}\nRUN {{ missing }}\n{% endfor %}\n"
    with pytest.raises(AcfileError) as caught:
        render(text, file="Acfile", variables={})
    span = caught.value.span
    assert span is not None and (span.line, span.column, span.length) == (3, 8, 7)
    assert caught.value.hint == "pass it with --var missing=VALUE or in a --var-file"


def test_lone_surrogate_in_a_variable_survives_the_pipe() -> None:
    rendered = render("LABEL a={{ v }}\n", file="Acfile", variables={"v": "x\udcffy"})
    assert rendered.lines[0].text == "LABEL a=x\udcffy"


def test_a_single_c_call_is_killed_at_the_wall_clock_even_off_the_main_thread() -> None:
    # sum over a range runs in C and never looks at signals: an alarm could not stop it.
    outcome: list[str] = []

    def work() -> None:
        try:
            run_confined(lambda: str(sum(range(10**13))), Limits(seconds=1, memory=64 << 20))
        except LimitExceeded as e:
            outcome.append(e.what)

    started = time.monotonic()
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    assert outcome == ["time"]
    assert time.monotonic() - started < 5


def test_the_child_runs_no_atexit_handler_and_flushes_no_parent_buffer(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(
        "import atexit, sys\n"
        "from acbuild.acfile.confine import Limits, run_confined\n"
        "atexit.register(lambda: print('ATEXIT', flush=True))\n"
        "sys.stdout.write('BUFFERED ')\n"  # still in the buffer when the child is forked
        "print(run_confined(lambda: 'VALUE', Limits(seconds=5, memory=64 << 20)))\n"
        "def boom(): raise SystemExit(3)\n"
        "try:\n"
        "    run_confined(boom, Limits(seconds=5, memory=64 << 20))\n"
        "except Exception as e: print(type(e).__name__)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         cwd=REPO, timeout=60, check=True).stdout
    assert out == "BUFFERED VALUE\nAcfileError\nATEXIT\n"  # SystemExit ends no child normally


def test_a_failure_inside_the_child_is_an_error_not_a_limit() -> None:
    def broken() -> str:
        raise KeyError("bug")

    with pytest.raises(AcfileError, match="template rendering failed: KeyError: 'bug'"):
        run_confined(broken, Limits(seconds=5, memory=64 << 20))
