"""Hardening: property tests over the Acfile grammar, and hostile text through the whole front end.

Generated valid Acfiles must parse and plan; any text at all must end in AcbuildError whose
every part has a line and column in the file (test_parse.py checks the message texts).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acbuild.acfile import instructions as ins
from acbuild.acfile.parse import parse_text
from acbuild.errors import AcbuildError, ErrorGroup
from acbuild.plan.plan import make_plan
from tests.support.cli import acbuild

REPO = Path(__file__).resolve().parents[2]

# --- generating valid Acfiles --------------------------------------------------------------

_ident = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\{}%#"),
                 min_size=1, max_size=12)
_abs_path = st.lists(_ident, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))


def _quote(value: str) -> str:
    """The value as one Acfile word: bare when safe, else double quotes with escapes."""
    if value and all(c.isalnum() or c in "._-/:" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pairs(names: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(names, _value).map(lambda kv: f"{kv[0]}={_quote(kv[1])}")
    return st.lists(pair, min_size=1, max_size=3).map(" ".join)


_label_name = _ident.filter(lambda n: n not in ("os", "arch", "version"))
_command = st.lists(_value, min_size=1, max_size=4)

_lines = st.one_of(
    _pairs(_label_name).map(lambda p: f"LABEL {p}"),
    # a variable is set once (a second ENV of it is an error): names made unique with {n}
    st.lists(_value, min_size=1, max_size=3).map(
        lambda vs: "ENV " + " ".join(f"E{{n}}_{k}={_quote(v)}" for k, v in enumerate(vs))),
    _command.map(lambda argv: "EXEC " + json.dumps(argv)),
    _command.map(lambda argv: "RUN " + json.dumps(argv)),
    _ident.map(lambda w: f"RUN /bin/echo {w}"),
    st.integers(0, 65535).map(lambda n: f"USER {n}"),
    st.integers(0, 65535).map(lambda n: f"GROUP {n}"),
    _abs_path.map(lambda p: f"WORKDIR {p}"),
    # ports and mount points get unique names in acfiles(): {n} is filled there
    st.tuples(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535)).map(
        lambda t: f"PORT p{{n}} {t[0]} {t[1]}"),
    _abs_path.map(lambda p: f"MOUNT m{{n}} {p}"),
    st.tuples(_ident, _abs_path).map(lambda t: f"COPY {t[0]} {t[1]}"),
    st.lists(_abs_path, min_size=1, max_size=3).map(lambda p: "PATH-WHITELIST " + " ".join(p)),
)


@st.composite
def acfiles(draw: st.DrawFn) -> tuple[str, int]:
    """A valid one-stage Acfile and its number of instructions; lines may be continued,
    commented or indented, and the keyword case varies."""
    body = draw(st.lists(_lines, max_size=12))
    lines = ["BEGIN scratch", f"NAME example.com/{draw(_ident)}", *body]
    out: list[str] = []
    for n, line in enumerate(lines):
        line = line.replace("{n}", str(n))
        keyword, _, rest = line.partition(" ")
        if draw(st.booleans()):
            keyword = keyword.lower()
        line = f"{keyword} {rest}"
        if draw(st.integers(0, 4)) == 0 and " " in rest:
            # continue the line at a space between words
            head, _, tail = rest.partition(" ")
            if head.count('"') % 2 == 0 and not head.startswith("["):
                line = f"{keyword} {head} \\\n    {tail}"
        if draw(st.integers(0, 5)) == 0:
            out.append("# " + draw(_value))
        out.append(" " * draw(st.integers(0, 2)) + line)
    return "\n".join(out) + "\n", len(lines)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(acfiles())
def test_generated_valid_acfiles_parse_and_plan(case: tuple[str, int]) -> None:
    text, count = case
    instructions = parse_text(text)
    assert len(instructions) == count
    assert isinstance(instructions[0], ins.Begin)
    plan = make_plan(instructions, acfile_dir=Path("/nonexistent"))
    assert plan.total_steps == count
    # parsing is a function of the text: the same text gives the same instructions
    assert parse_text(text) == instructions


# --- any text: AcbuildError with a place, nothing else ------------------------------------


def _check_errors_are_placed(text: str) -> None:
    try:
        parse_text(text)
    except AcbuildError as e:
        errors = e.errors if isinstance(e, ErrorGroup) else (e,)
        assert errors
        lines = len(text.splitlines()) + 1  # \r, \u2028 and the like also end lines
        for err in errors:
            assert err.span is not None, f"no line and column: {err.render()}"
            assert 1 <= err.span.line <= lines, err.render()
            assert err.span.column >= 1, err.render()
            assert err.render().startswith(f"Acfile:{err.span.line}:{err.span.column}: error: ")


_PIECES = st.sampled_from([
    "BEGIN scratch\n", "NAME example.com/x\n", "RUN ", "COPY ", "ISOLATOR ", "PORT ", "LABEL ",
    "ENV ", "EXEC ", "\n", "\\\n", " ", "'", '"', "[", "]", "{", "}", "=", ",", "--", "#",
    "{{", "}}", "{%", "%}", "{#", "#}", "{% if x %}", "{% endif %}", "{% for x in y %}",
    "{% endfor %}", "{{ x }}", "{{ 1/0 }}", "{{ nope() }}", "{% raw %}", "{% endraw %}",
    "{% macro m() %}", "{% set a = %}", "{{ a.b.c }}", "{{ 'x' * 3 }}", "\x00", "\r", "\t",
    "\ufeff", "\u2028", "\x85", "é", "a", "1", ":",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=60).map("".join))
def test_acfile_shaped_junk_errors_have_line_and_column(text: str) -> None:
    _check_errors_are_placed(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_errors_have_line_and_column(text: str) -> None:
    _check_errors_are_placed(text)


_FRONT_END = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from acbuild.errors import AcbuildError, ErrorGroup
from acbuild.acfile.parse import parse_text
text = sys.stdin.read()
try:
    parse_text(text)
    print(json.dumps({"ok": True}))
except AcbuildError as e:
    errors = e.errors if isinstance(e, ErrorGroup) else (e,)
    print(json.dumps({"errors": [[x.span and x.span.line, x.span and x.span.column, x.message]
                                  for x in errors]}))
"""


def front_end(text: str, timeout: float = 20) -> dict[str, object]:
    """parse_text(text) in a child limited to 1 GiB of address space: what it said, as JSON.
    A traceback (MemoryError included) fails the test with the child's stderr."""
    proc = subprocess.run([sys.executable, "-c", _FRONT_END], input=text, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _placed(result: dict[str, object], text: str) -> list[str]:
    errors = result.get("errors")
    assert isinstance(errors, list) and errors, result
    lines = len(text.splitlines()) + 1
    for line, column, message in errors:
        assert line is not None and 1 <= line <= lines and column >= 1, message
        assert "MemoryError" not in message and "RecursionError" not in message, message
    return [m for _, _, m in errors]


@pytest.mark.parametrize(
    "text",
    [
        "BEGIN scratch\nRUN 'unbalanced\n",
        'BEGIN scratch\nRUN "unbalanced\n',
        "BEGIN scratch\nRUN [\"a\", \"b\"\n",
        "BEGIN scratch\nISOLATOR a {\"x\": [1, 2}\n",
        "BEGIN scratch\n{% if x %}\nRUN a\n",
        "BEGIN scratch\n{{ x \n",
        "BEGIN scratch\n{% endfor %}\n",
        "BEGIN scratch\n{{ ''.__class__.__mro__ }}\n",
        "BEGIN scratch\n{% include 'Acfile' %}\n",
        "BEGIN scratch\n{{ range(10**9) | list | length }}\n",
        "BEGIN scratch\nRUN \\\n" + "a \\\n" * 20_000 + "'\n",
        "BEGIN scratch\nLABEL " + "x" * 2_000_000 + "\n",
        "BEGIN scratch\nISOLATOR a " + "[" * 50_000 + "\n",
        "\n" * 50_000 + "COPPY a b\n",
    ],
    ids=["single-quote", "double-quote", "json-bracket", "json-brace", "open-if",
         "open-expression", "stray-endfor", "sandbox-escape", "include", "range-bomb",
         "deep-continuation", "huge-line", "deep-json", "far-down"],
)
def test_hostile_acfiles_fail_with_a_place(text: str) -> None:
    _placed(front_end(text), text)


@pytest.mark.parametrize("expression", ["'a' * 10**10", "[1] * 10**9", "('a' ~ 'b') * 10**10",
                                        "'ab' * 600000 + 'c' * 600000"])
def test_template_value_bombs_are_refused_with_a_message(expression: str) -> None:
    text = f"BEGIN scratch\n{{{{ {expression} }}}}\n"
    (message,) = _placed(front_end(text), text)
    assert message.startswith("template error: ") and "too large" in message


def test_template_endless_loop_is_stopped() -> None:
    text = ("BEGIN scratch\n{% for i in range(100000) %}{% for j in range(100000) %}"
            "{% endfor %}{% endfor %}\n")
    (message,) = _placed(front_end(text, timeout=30), text)
    assert message == "template rendering took longer than 10 s"


def test_binary_acfile_through_the_cli_is_one_clean_line(tmp_path: Path) -> None:
    acfile = tmp_path / "Acfile"
    acfile.write_bytes(b"BEGIN scratch\nNAME example.com/x\n\xff\xfe\x00garbage\n")
    r = acbuild("build", acfile, "-o", tmp_path / "x.aci")
    assert r.code == 1
    assert r.stderr == f"error: {acfile}:3: Acfile is not valid UTF-8\n"
    assert not (tmp_path / "x.aci").exists()


# --- coverage-guided fuzzing (atheris), a short seeded budget in CI ------------------------


def atheris_run(target: str, runs: int, work: Path, seed: int = 1) -> str:
    """Run fuzz/<target> for ``runs`` inputs from a copy of its seed corpus (libFuzzer adds
    to the corpus it is given); a crash fails the test with the fuzzer's report."""
    corpus = work / "corpus"
    shutil.copytree(REPO / "fuzz" / "corpus" / target.removeprefix("fuzz_").removesuffix(".py"),
                    corpus)
    args = [sys.executable, str(REPO / "fuzz" / target), f"-runs={runs}", f"-seed={seed}",
            "-rss_limit_mb=2048", "-timeout=10", "-max_len=4096",
            f"-artifact_prefix={work}/", str(corpus)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Done {runs} runs" in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


def test_atheris_parser_target_short_run(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    atheris_run("fuzz_parse.py", runs=1000, work=tmp_path)
