"""fmt: canonical style, idempotence and unchanged meaning (examples and generated Acfiles)."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from acbuild.acfile.fmt import format_text
from acbuild.acfile.parse import parse_text
from acbuild.errors import AcbuildError, ErrorGroup, Span
from acbuild.plan.plan import make_plan
from tests.conftest import EXAMPLES
from tests.support.cli import acbuild

NOWHERE = Span(file="Acfile", line=1)


def meaning(text: str) -> tuple[object, ...]:
    """The plan's steps with every place and original text taken out."""
    try:
        instructions = parse_text(text, variables={"flag": "1", "name": "n"})
        plan = make_plan(instructions, acfile_dir=Path("/nonexistent"))
    except AcbuildError as e:  # a generated file may be wrong; then wrong in the same way
        errors = e.errors if isinstance(e, ErrorGroup) else (e,)
        # Messages may name other lines ("already defined on line 4"); fmt folds blank lines.
        return tuple(re.sub(r"\bline \d+", "line N", x.message) for x in errors)
    return tuple(
        (s.number, s.stage, dataclasses.replace(s.instruction, span=NOWHERE, text=""))
        for stage in plan.stages for s in stage.steps
    )


def test_canonical_style() -> None:
    text = (
        "# a comment   \n\n\n"
        "begin   scratch as  build\n"
        "name example.com/x\n"
        "copy --mode=0755   --from=build a   b\n"
        "run --user=1 --network=host --env=A=1 --env=B=2 sh -c \"a   b\"\n"
        "port --count=2 http tcp 80\n"
        "dependency --size=1 example.com/d:1 --label=a=b --image-id=sha512-1\n"
        "exec [\"/bin/x\",   \"y z\"]\n\n"
    )
    assert format_text(text) == (
        "# a comment\n\n"
        "BEGIN scratch AS build\n"
        "NAME example.com/x\n"
        "COPY --from=build --mode=0755 a b\n"
        "RUN --network=host --env=A=1 --env=B=2 --user=1 sh -c \"a   b\"\n"
        "PORT http tcp 80 --count=2\n"
        "DEPENDENCY example.com/d:1 --image-id=sha512-1 --label=a=b --size=1\n"
        "EXEC [\"/bin/x\", \"y z\"]\n"
    )


def test_continuations_are_indented_and_kept() -> None:
    text = "BEGIN scratch\nrun  --timeout=5s --network=host sh -c \\\n  'echo  a' \\\n" \
           "# inside\n\n   \\\n        done\n"
    assert format_text(text) == (
        "BEGIN scratch\nRUN --network=host --timeout=5s sh -c \\\n    'echo  a' \\\n"
        "    # inside\n\n    done\n"
    )


def test_template_lines_are_left_as_written() -> None:
    text = "begin scratch\n{% if flag %}\nlabel  a=b\n{% endif %}\nenv  A={{ name }}  B=c\n" \
           "{#\nexec  /x\n#}\nexec  /bin/{{ name }} \\\n   now\n"
    assert format_text(text) == (
        "BEGIN scratch\n{% if flag %}\nLABEL a=b\n{% endif %}\nenv  A={{ name }}  B=c\n"
        "{#\nexec  /x\n#}\nexec  /bin/{{ name }} \\\n   now\n"
    )


def test_lines_that_do_not_split_into_words_are_kept() -> None:
    assert format_text('copy  "a  b\n') == 'copy  "a  b\n'


def test_examples_are_formatted_and_keep_their_meaning() -> None:
    for acfile in sorted(EXAMPLES.glob("*/Acfile")):
        text = acfile.read_text()
        once = format_text(text)
        assert format_text(once) == once, acfile
        assert meaning(once) == meaning(text), acfile


# ---- generated Acfiles -------------------------------------------------------------------------

# (keyword, leading or trailing options, positionals)
LINES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    ("NAME", (), ("example.com/app",), "none"),
    ("LABEL", (), ("version=1.0", "arch=amd64"), "none"),
    ("ANNOTATION", (), ('authors="a b"', "x=y"), "none"),
    ("ENV", (), ("A=1", "B='two words'"), "none"),
    ("COPY", ("--mode=0644", "--chown=1:2"), ("a", "b", "/dir/"), "leading"),
    ("RUN", ("--timeout=5m", "--env=X=1", "--env=Y=2", "--workdir=/w", "--network=host"),
     ("sh", "-c", "'echo  hi'"), "leading"),
    ("RUN", (), ('["/bin/sh",', '"-c",', '"true"]'), "leading"),
    ("EXEC", (), ("/bin/app", "--flag"), "none"),
    ("USER", (), ("1000",), "none"),
    ("GROUP", (), ("1000",), "none"),
    ("WORKDIR", (), ("/srv",), "none"),
    ("PORT", ("--socket-activated", "--count=3"), ("http", "tcp", "8080"), "trailing"),
    ("MOUNT", ("--read-only",), ("data", "/data"), "trailing"),
    ("ISOLATOR", (), ("resource/cpu", '{"limit":', '"1"}'), "none"),
    ("EVENT-HANDLER", (), ("pre-start", "/bin/setup"), "none"),
    ("DEPENDENCY", ("--label=os=linux", "--size=10", "--label=a=b"), ("example.com/dep:1",),
     "trailing"),
    ("SUPPLEMENTARY-GIDS", (), ("1", "2"), "none"),
    ("PATH-WHITELIST", (), ("/bin", "/etc"), "none"),
    ("{{ 'SIGN' }}", (), ("ABCDEF",), "none"),
)

cases = st.sampled_from(("upper", "lower", "title"))
spaces = st.sampled_from((" ", "  ", "\t", " \t "))


@st.composite
def lines(draw: st.DrawFn) -> str:
    keyword, options, positionals, kind = draw(st.sampled_from(LINES))
    case = draw(cases)
    kw = keyword if "{" in keyword else getattr(keyword, case)()
    options = tuple(draw(st.permutations(options)))
    if kind == "trailing":
        cut = draw(st.integers(0, len(positionals)))
        words = [kw, *positionals[:cut], *options, *positionals[cut:]]
    else:
        words = [kw, *options, *positionals]
    text = draw(st.sampled_from(("", " ", "  ")))
    for i, word in enumerate(words):
        if i:
            text += draw(st.sampled_from((" \\\n" + draw(spaces), "\\\n  # c\n ")))\
                if draw(st.integers(0, 5)) == 0 else draw(spaces)
        text += word
    return text + draw(st.sampled_from(("", " ", "\t")))


@st.composite
def acfiles(draw: st.DrawFn) -> str:
    body = draw(st.lists(st.one_of(lines(), st.sampled_from(("", "# note", "  #  x  "))),
                         max_size=12))
    if draw(st.booleans()):
        body = ["{% if flag %}", *body, "{% endif %}"]
    return "\n".join([draw(st.sampled_from(("BEGIN scratch", "begin  scratch"))),
                      "NAME example.com/app", *body]) + "\n"


@settings(max_examples=150, deadline=None)
@given(acfiles())
def test_generated_acfiles_format_idempotently_and_keep_their_meaning(text: str) -> None:
    once = format_text(text)
    assert format_text(once) == once
    assert meaning(once) == meaning(text)


# ---- the verb ---------------------------------------------------------------------------------


def test_cli_check_and_rewrite(tmp_path: Path) -> None:
    acfile = tmp_path / "Acfile"
    acfile.write_text("begin scratch\nname  a.com/x\n")
    acfile.chmod(0o640)
    r = acbuild("fmt", "--check", acfile)
    assert (r.code, r.stdout) == (1, f"{acfile}\n")
    assert acfile.read_text() == "begin scratch\nname  a.com/x\n"
    assert acbuild("fmt", acfile).code == 0
    assert acfile.read_text() == "BEGIN scratch\nNAME a.com/x\n"
    assert acfile.stat().st_mode & 0o777 == 0o640
    assert acbuild("fmt", "--check", acfile).code == 0


def test_formatted_example_builds_the_same_image(hello_context: Path, tmp_path: Path) -> None:
    other = tmp_path / "formatted"
    shutil.copytree(hello_context, other)
    acfile = other / "Acfile"
    acfile.write_text(acfile.read_text().replace("COPY", "copy  ").replace("EXEC", "exec"))
    assert acbuild("fmt", acfile).code == 0
    assert acfile.read_text() == (hello_context / "Acfile").read_text()
    acfile.write_text(acfile.read_text().replace("COPY", "copy  "))
    ids = [acbuild("build", ctx / "Acfile", "-q", "-o", tmp_path / f"{i}.aci").stdout
           for i, ctx in enumerate((hello_context, other))]
    assert ids[0] == ids[1] and ids[0].startswith("sha512-")
