"""Docs: every command README.md and docs/ show is run here, or visibly not meant to be run.

Each code block is fenced and says what it is (``test_blocks_say_what_they_are`` enforces it;
an indented code block or a bare fence is an error):

- ```console: commands this test runs. A ``$ `` line is a command (a ``<<'EOF'`` here-document
  runs on to its ``EOF`` line); the lines after it are its expected output, stdout and stderr
  together, where ``…`` matches any text and a line of only ``…`` any number of lines;
  ``[exit N]`` says the status (default 0).
- ```synopsis: the form of a command, with placeholders or alternatives; shown, not run.
- ```text: output, messages, file layouts; no line of it is a command (none starts with ``$ ``
  or ``acbuild-py``).
- ```acfile: an Acfile; docs/acfile.md says how to build its blocks, and this test builds
  every one of them that way.
- ```yaml: a CI recipe (docs/ci.md); tests/test_docs_setup.py runs its shell steps.
- ```sh: only README.md's two set-up commands, checked by tests/test_docs_setup.py.
- ```toml, ```json, ```python, ```nginx: files of other programs.

A document runs top to bottom in one bash (state carries over as in a terminal), in a fresh
copy of the checkout (tracked files only: no venv, no built programs), with a new HOME and a
clean environment whose PATH is this interpreter's bin directory, where acbuild-py is
installed, before the system's. Nothing is set up or rewritten behind the document's back.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from acbuild.sandbox.sandbox import sandbox_available
from tests.conftest import REPO
from tests.support.docrun import (
    INTERPRETER_BIN,
    Block,
    Shell,
    blocks,
    checkout_copy,
    clean_env,
    matches,
)

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
KINDS = {"console", "synopsis", "text", "acfile", "yaml", "sh", "toml", "json", "python",
         "nginx", "mermaid", "shell"}
ACFILE_DOC = REPO / "docs" / "acfile.md"
# How docs/acfile.md says its Acfiles are built (the test checks it says so).
ACFILE_PATH = "try/Acfile"
ACFILE_BUILD = "acbuild-py build try/Acfile -o try/image.aci"

_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1\s*$")
# quickstart.md needs a git checkout of examples/, Go, mmdebstrap and root, and takes
# minutes: tests/test_quickstart.py runs it (with its Debian base cached).
OWN_TESTS = frozenset({"quickstart.md"})
# Programs a document may start that a fresh clone's machine may lack: (command, package).
NEEDS = (("docker-registry", "docker-registry"), ("skopeo", "skopeo"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    line: int
    command: str
    output: tuple[str, ...]
    status: int


def examples(block: Block) -> Iterator[Example]:
    lines = block.body.splitlines()
    assert lines and lines[0].startswith("$ "), (
        f"line {block.line + 1}: a console block starts with a '$ ' command")
    i = 0
    while i < len(lines):
        line, first = lines[i], i
        command = [line[2:]]
        if m := _HEREDOC.search(line):
            while (i := i + 1) < len(lines) and lines[i] != m[2]:
                command.append(lines[i])
            assert i < len(lines), f"line {block.line + 1 + first}: here-document never ends"
            command.append(lines[i])
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        status = 0
        if output and (s := re.fullmatch(r"\[exit (\d+)\]", output[-1])):
            status, output = int(s[1]), output[:-1]
        yield Example(line=block.line + 1 + first, command="\n".join(command),
                      output=tuple(output), status=status)


def _runs(doc: Path) -> bool:
    return any(b.kind == "console" or (doc == ACFILE_DOC and b.kind == "acfile")
               for b in blocks(doc.read_text())[0])


def _name(doc: Path) -> str:
    return str(doc.relative_to(REPO))


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_blocks_say_what_they_are(doc: Path) -> None:
    fenced, indented = blocks(doc.read_text())
    name = _name(doc)
    assert not indented, f"{name}:{indented[0]}: an indented code block; fence it and say " \
        "what it is (```console, ```synopsis, ```text, …: see tests/test_docs.py)"
    for b in fenced:
        where = f"{name}:{b.line}"
        assert b.kind in KINDS, f"{where}: ```{b.kind}: a block says what it is, one of " \
            f"{sorted(KINDS)} (see tests/test_docs.py)"
        if b.kind == "text":
            command = next((line for line in b.body.splitlines()
                            if line.lstrip().startswith(("$ ", "acbuild-py "))), None)
            assert command is None, f"{where}: a command in a ```text block: {command!r}; " \
                "make it ```console (run) or ```synopsis (not run)"
        if b.kind == "console":
            list(examples(b))
        assert b.kind != "sh" or name == "README.md", f"{where}: ```sh only in the README"
        assert b.kind != "yaml" or name == "docs/ci.md", f"{where}: ```yaml only in docs/ci.md"
        assert b.kind != "shell" or name == "docs/quickstart.md", (
            f"{where}: ```shell (run by tests/test_quickstart.py where rkt is) only in "
            "docs/quickstart.md")
        assert b.kind != "acfile" or doc == ACFILE_DOC, (
            f"{where}: ```acfile blocks are built only in docs/acfile.md; show a shipped "
            "example with a console `cat` instead")


@pytest.mark.parametrize("doc", [d for d in DOCS if _runs(d) and d.name not in OWN_TESTS],
                         ids=_name)
def test_document_runs(doc: Path, tmp_path: Path) -> None:
    if (reason := sandbox_available()) is not None:  # the documents build and run images
        pytest.skip(f"no sandbox: {reason}")
    text = doc.read_text()
    for tool, package in NEEDS:
        if f"$ {tool} " in text and shutil.which(tool) is None:
            pytest.skip(f"{_name(doc)} runs {tool}, which is not installed (apt install "
                        f"{package}; .ci/run does)")
    if doc == ACFILE_DOC:
        assert f"`{ACFILE_BUILD}`" in text and f"`{ACFILE_PATH}`" in text, (
            "docs/acfile.md must say how its Acfiles are built, as this test builds them")
    home = tmp_path / "home"
    home.mkdir()
    work = checkout_copy(tmp_path / "acbuild-py")
    name = _name(doc)
    with Shell(work, clean_env(home, INTERPRETER_BIN)) as shell:
        for b in blocks(text)[0]:
            if b.kind == "acfile" and doc == ACFILE_DOC:
                (work / ACFILE_PATH).parent.mkdir(exist_ok=True)
                (work / ACFILE_PATH).write_text(b.body)
                code, out = shell.run(ACFILE_BUILD)
                assert code == 0, f"{name}:{b.line}: this Acfile does not build:\n{b.body}{out}"
                continue
            if b.kind != "console":
                continue
            for ex in examples(b):
                code, out = shell.run(ex.command)
                where = f"{name}:{ex.line}: $ {ex.command}"
                assert code == ex.status, f"{where}\n[exit {code}]\n{out}"
                actual = [line.rstrip() for line in out.splitlines()]
                if ex.output:
                    assert matches(ex.output, actual), f"{where}\nexpected:\n" + "\n".join(
                        ex.output) + "\nactual:\n" + "\n".join(actual)


def test_matching_rules() -> None:
    assert matches(("a …", "b"), ["a x y", "b"])
    assert matches(("a", "…", "z"), ["a", "b", "c", "z"])
    assert not matches(("a", "b"), ["a", "c"])
    assert not matches(("a",), ["a", "b"])
    (b,), _ = blocks("```console\n$ acbuild-py x\nout\n[exit 1]\n$ cat <<'EOF'\nhi\nEOF\nhi\n```\n")
    first, second = examples(b)
    assert (first.command, first.output, first.status) == ("acbuild-py x", ("out",), 1)
    assert (second.command, second.output, second.line) == ("cat <<'EOF'\nhi\nEOF", ("hi",), 5)
    fenced, indented = blocks("text\n\n    indented\n- item\n  ```text\n  x\n  ```\n")
    assert indented == [3] and fenced == [Block(kind="text", line=5, body="x\n")]


def test_shell_keeps_state_and_stdin_is_empty(tmp_path: Path) -> None:
    with Shell(tmp_path, clean_env(tmp_path)) as shell:
        assert shell.run("cd / && X=1 && cat") == (0, "")
        assert shell.run("pwd; echo $X; false") == (1, "/\n1\n")


def test_command_reference_is_up_to_date() -> None:
    sys.path.insert(0, str(REPO / "docs"))
    try:
        from generate_commands import generate
    finally:
        sys.path.remove(str(REPO / "docs"))
    text = (REPO / "docs" / "commands.md").read_text()
    assert "\n## build\n" in text and "\n## verify\n" in text
    assert text == generate(), "docs/commands.md is stale: python docs/generate_commands.py"


def test_docs_index_lists_every_page() -> None:
    index = (REPO / "docs" / "README.md").read_text()
    pages = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    linked = set(re.findall(r"\]\(([^)#]+\.md)\)", index))
    assert linked == pages - {"README.md"}


def test_environment_page_names_every_variable_read() -> None:
    """docs/environment.md lists each variable the code reads (``environ.get("X")``,
    ``environ["X"]``, ``"X" in environ``, or a ``*_ENV = "X"`` constant)."""
    read = set()
    for source in (REPO / "acbuild").rglob("*.py"):
        text = source.read_text()
        read |= set(re.findall(r"environ(?:\.get\(|\[)\"([A-Z_]+)\"", text))
        read |= set(re.findall(r"\"([A-Z_]+)\" (?:not )?in (?:os\.)?environ", text))
        read |= set(re.findall(r"^\w+_ENV = \"([A-Z_]+)\"", text, re.M))
    assert {"XDG_CACHE_HOME", "ACBUILD_TRUST_STORE", "CI"} <= read
    page = (REPO / "docs" / "environment.md").read_text()
    assert not {v for v in read if f"`{v}`" not in page}
