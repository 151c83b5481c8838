"""Tests for acfile/render: variables, strict undefined, raw blocks and source-line mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.acfile.render import Rendered, RenderedLine, load_variables, render
from acbuild.errors import AcfileError


def lines(rendered: Rendered) -> list[tuple[int, str]]:
    return [(line.number, line.text) for line in rendered.lines]


def error_text(text: str, **variables: str) -> str:
    with pytest.raises(AcfileError) as info:
        render(text, file="Acfile", variables=variables)
    return info.value.render()


def test_plain_text_keeps_lines_and_numbers() -> None:
    rendered = render("BEGIN scratch\n\nNAME a\n", file="Acfile", variables={})
    assert rendered == Rendered(
        file="Acfile",
        lines=(
            RenderedLine(number=1, text="BEGIN scratch"),
            RenderedLine(number=2, text=""),
            RenderedLine(number=3, text="NAME a"),
        ),
        variables=(),
    )


def test_variables_substituted_and_listed_sorted() -> None:
    rendered = render("NAME {{ name }}\nLABEL version={{ v }}\n", file="F", variables={
        "v": "1.0", "name": "example.com/x"})
    assert lines(rendered) == [(1, "NAME example.com/x"), (2, "LABEL version=1.0")]
    assert rendered.variables == (("name", "example.com/x"), ("v", "1.0"))


def test_no_autoescape() -> None:
    rendered = render("ANNOTATION a={{ v }}\n", file="F", variables={"v": "<a&b>"})
    assert lines(rendered) == [(1, "ANNOTATION a=<a&b>")]


def test_undefined_variable_is_an_error_with_line_and_column() -> None:
    assert error_text("BEGIN scratch\nNAME {{ nme }}\n") == (
        "Acfile:2:9: error: undefined template variable 'nme'\n"
        "    NAME {{ nme }}\n"
        "            ^^^\n"
        "    hint: pass it with --var nme=VALUE or in a --var-file"
    )


def test_undefined_inside_for_loop_points_at_its_line() -> None:
    text = "BEGIN scratch\n{% for x in xs %}\nCOPY {{ x }} {{ missing }}\n{% endfor %}\n"
    message = error_text(text, xs="ab")
    assert message.startswith("Acfile:3:17: error: undefined template variable 'missing'")


def test_raw_protects_braces() -> None:
    text = "RUN echo {% raw %}{{ not a var }}{% endraw %}\n"
    assert lines(render(text, file="F", variables={})) == [(1, "RUN echo {{ not a var }}")]


def test_raw_block_over_several_lines_keeps_numbers() -> None:
    text = "A\n{% raw %}\nB {{ x }}\nC\n{% endraw %}\nD\n"
    got = [(n, t) for n, t in lines(render(text, file="F", variables={})) if t]
    assert got == [(1, "A"), (3, "B {{ x }}"), (4, "C"), (6, "D")]


def test_syntax_error_has_line_and_column() -> None:
    assert error_text("BEGIN scratch\nRUN a {% frobnicate %}\n") == (
        "Acfile:2:10: error: template syntax error: Encountered unknown tag 'frobnicate'\n"
        "    RUN a {% frobnicate %}\n"
        "             ^^^^^^^^^^"
    )


def test_unclosed_block_is_a_syntax_error() -> None:
    message = error_text("{% if x %}\nRUN a\n")
    assert message.startswith("Acfile:")
    assert "error: template syntax error: Unexpected end of template" in message


def test_runtime_error_in_expression_is_an_acfile_error() -> None:
    message = error_text("A\nRUN {{ 1 // 0 }}\n")
    assert message.startswith("Acfile:2:5: error: template error: ZeroDivisionError")


def test_sandbox_blocks_python_internals() -> None:
    assert "unsafe" in error_text("RUN {{ ''.__class__ }}\n")


def test_for_loop_lines_map_to_the_loop_body() -> None:
    text = "BEGIN scratch\n{% for f in files.split() %}\nCOPY {{ f }} /bin/\n{% endfor %}\nNAME x\n"
    got = [(n, t) for n, t in lines(render(text, file="F", variables={"files": "a b"})) if t]
    assert got == [(1, "BEGIN scratch"), (3, "COPY a /bin/"), (3, "COPY b /bin/"), (5, "NAME x")]


def test_if_else_lines_map_to_the_taken_branch() -> None:
    text = "{% if mode == 'dev' %}\nRUN dev\n{% else %}\nRUN prod\n{% endif %}\nNAME x\n"
    got = [(n, t) for n, t in lines(render(text, file="F", variables={"mode": "prod"})) if t]
    assert got == [(4, "RUN prod"), (6, "NAME x")]


def test_whitespace_control_joins_lines() -> None:
    text = "RUN a\n{%- if 1 %} b{% endif %}\nNAME x\n"
    got = [(n, t) for n, t in lines(render(text, file="F", variables={})) if t]
    assert got == [(1, "RUN a b"), (3, "NAME x")]


def test_line_starting_with_a_tag_maps_to_that_line() -> None:
    text = "A\nB\n{% if 1 %}RUN c{% endif %}\n"
    assert lines(render(text, file="F", variables={}))[-1] == (3, "RUN c")


def test_multiline_value_belongs_to_the_line_it_is_written_on() -> None:
    text = "A\n{{ v }}\nC\n"
    got = lines(render(text, file="F", variables={"v": "B1\nB2"}))
    assert got == [(1, "A"), (2, "B1"), (2, "B2"), (3, "C")]


def test_marker_characters_in_input_do_not_confuse_mapping() -> None:
    text = "A \ue000" + "7\ue000\nB\n"
    assert lines(render(text, file="F", variables={})) == [(1, "A \ue0007\ue000"), (2, "B")]


def test_crlf_input() -> None:
    got = lines(render("A\r\n{% if 1 %}\r\nB\r\n{% endif %}\r\n", file="F", variables={}))
    assert [(n, t) for n, t in got if t] == [(1, "A"), (3, "B")]


def test_trailing_newline_kept_without_empty_line() -> None:
    assert lines(render("A\n", file="F", variables={})) == [(1, "A")]
    assert lines(render("A", file="F", variables={})) == [(1, "A")]


# --- variables ------------------------------------------------------------------------------


def test_load_variables_var_wins_over_files(tmp_path: Path) -> None:
    first = tmp_path / "a.toml"
    first.write_text('name = "from-a"\nversion = "1"\nport = 8080\ndebug = true\n')
    second = tmp_path / "b.toml"
    second.write_text('version = "2"\nratio = 1.5\n')
    got = load_variables(["name=cli", "extra=x=y"], [first, second])
    assert got == {
        "name": "cli", "version": "2", "port": "8080", "debug": "true", "ratio": "1.5",
        "extra": "x=y",
    }


def test_var_without_equals_is_an_error() -> None:
    with pytest.raises(AcfileError, match=r"--var 'name' must be KEY=VALUE$"):
        load_variables(["name"], [])


def test_var_with_bad_name_is_an_error() -> None:
    with pytest.raises(AcfileError, match="'a-b' is not a valid variable name"):
        load_variables(["a-b=1"], [])


def test_var_file_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AcfileError, match=r"cannot read variable file .*nope\.toml"):
        load_variables([], [tmp_path / "nope.toml"])


def test_var_file_bad_toml_has_a_place(tmp_path: Path) -> None:
    bad = tmp_path / "vars.toml"
    bad.write_text('a = "1"\nb = \n')
    with pytest.raises(AcfileError) as info:
        load_variables([], [bad])
    assert info.value.span is not None
    assert (info.value.span.file, info.value.span.line) == (str(bad), 2)
    assert info.value.message.startswith("invalid TOML in variable file")


def test_var_file_table_value_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "vars.toml"
    bad.write_text("[table]\na = 1\n")
    with pytest.raises(AcfileError, match="variable 'table' must be a string, number or boolean"):
        load_variables([], [bad])
