"""Docs: every ```console block in docs/*.md is run, so the examples cannot rot.

A block's ``$ command`` lines run in bash (one temporary directory a document, blocks in
order, so state carries over); the lines after a command are its expected output, stdout and
stderr together, where ``…`` matches any text and a line of only ``…`` any number of lines;
``[exit N]`` says the status (default 0). A document declares what it needs in a comment,
``<!-- docs-test: hello gpg server -->``: the hello program and an Acfile naming
localhost/hello in ./hello, a GnuPG signing key (signer@example.com, public key in
./signer.asc), a web server on 127.0.0.1 serving ./repo (the port written 8080 in the docs).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO

_FENCE = re.compile(r"^```console\n(.*?)^```", re.DOTALL | re.MULTILINE)
# The documents that show commands; the others have nothing to run.
# quickstart.md needs a git checkout of examples/, Go, mmdebstrap and root, and takes
# minutes: tests/test_quickstart.py runs it (with its Debian base cached).
OWN_TESTS = frozenset({"quickstart.md"})
DOCS = sorted(d for d in (REPO / "docs").glob("*.md")
              if _FENCE.search(d.read_text()) and d.name not in OWN_TESTS)
_NEEDS = re.compile(r"<!--\s*docs-test:([^>]*)-->")
DOC_PORT = "8080"


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    line: int
    command: str
    output: tuple[str, ...]
    status: int


def examples(text: str) -> Iterator[Example]:
    for block in _FENCE.finditer(text):
        start = text.count("\n", 0, block.start()) + 2
        current: list[str] | None = None
        first = start
        for i, line in enumerate(block[1].splitlines()):
            if line.startswith("$ "):
                if current is not None:
                    yield _example(current, first)
                current, first = [line[2:]], start + i
            elif current is not None:
                current.append(line)
        if current is not None:
            yield _example(current, first)


def _example(lines: list[str], line: int) -> Example:
    output = lines[1:]
    status = 0
    if output and (m := re.fullmatch(r"\[exit (\d+)\]", output[-1])):
        status, output = int(m[1]), output[:-1]
    return Example(line=line, command=lines[0], output=tuple(output), status=status)


def matches(expected: tuple[str, ...], actual: list[str]) -> bool:
    parts = []
    for e in expected:
        if e == "…":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*".join(map(re.escape, e.split("…"))) + r"\n")
    return re.fullmatch("".join(parts), "".join(a + "\n" for a in actual)) is not None


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "repo").mkdir()
    handler = functools.partial(_Quiet, directory=str(tmp_path / "repo"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield str(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


def _setup(needs: set[str], where: Path, hello_binary: Path, env: dict[str, str]) -> None:
    if "examples" in needs:  # commands run from the top of a checkout
        shutil.copytree(EXAMPLES, where / "examples" / "Acfiles")
    if "hello" in needs:
        (where / "hello").mkdir()
        text = (EXAMPLES / "hello" / "Acfile").read_text()
        (where / "hello" / "Acfile").write_text(text.replace("NAME example.com/hello",
                                                             "NAME localhost/hello"))
        shutil.copy2(hello_binary, where / "hello" / "hello")
        shutil.copy2(EXAMPLES / "hello" / ".acignore", where / "hello" / ".acignore")
    if "gpg" in needs:
        home = Path(env["GNUPGHOME"])
        home.mkdir(mode=0o700)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
        subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key",
                        "Tutorial Signer <signer@example.com>", "ed25519", "sign", "never"],
                       check=True, capture_output=True)
        with open(where / "signer.asc", "wb") as f:
            subprocess.run([*gpg, "--armor", "--export", "signer@example.com"], stdout=f,
                           check=True)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_console_examples(doc: Path, tmp_path: Path, hello_binary: Path,
                          request: pytest.FixtureRequest) -> None:
    text = doc.read_text()
    found = list(examples(text))
    assert found, f"{doc.name} has a console block without a '$ ' command"
    needs = set(" ".join(_NEEDS.findall(text)).split())
    port = request.getfixturevalue("server") if "server" in needs else DOC_PORT
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "GNUPGHOME": str(home / ".gnupg"),
           "CI": "true", "COLUMNS": "100"}
    env.pop("ACBUILD_TRUST_STORE", None)
    home.mkdir()
    _setup(needs, tmp_path, hello_binary, env)
    for ex in found:
        command = ex.command.replace(DOC_PORT, port)
        proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        where = f"{doc.name}:{ex.line}: $ {ex.command}"
        assert proc.returncode == ex.status, f"{where}\n{proc.stdout}"
        actual = [line.rstrip() for line in proc.stdout.replace(port, DOC_PORT).splitlines()]
        if ex.output:
            assert matches(ex.output, actual), f"{where}\nexpected:\n" + "\n".join(
                ex.output) + "\nactual:\n" + "\n".join(actual)


def test_matching_rules() -> None:
    assert matches(("a …", "b"), ["a x y", "b"])
    assert matches(("a", "…", "z"), ["a", "b", "c", "z"])
    assert not matches(("a", "b"), ["a", "c"])
    assert not matches(("a",), ["a", "b"])
    (ex,) = examples("```console\n$ acbuild-py x\nout\n[exit 1]\n```\n")
    assert (ex.command, ex.output, ex.status) == ("acbuild-py x", ("out",), 1)


def test_command_reference_is_up_to_date() -> None:
    sys.path.insert(0, str(REPO / "docs"))
    try:
        from generate_commands import generate
    finally:
        sys.path.remove(str(REPO / "docs"))
    text = (REPO / "docs" / "commands.md").read_text()
    assert "\n## build\n" in text and "\n## verify\n" in text
    assert text == generate(), "docs/commands.md is stale: python docs/generate_commands.py"
