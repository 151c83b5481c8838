"""Tests for acfile/parse: every instruction, quoting, continuation, options and exact errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acbuild.acfile import instructions as ins
from acbuild.acfile.parse import grammar_text, parse_text
from acbuild.acfile.parse_words import parse_duration, split_image_reference
from acbuild.errors import AcbuildError, AcfileError, ErrorGroup, Span


def one(text: str) -> ins.Instruction:
    (instruction,) = parse_text(text)
    return instruction


def error(text: str, **variables: str) -> str:
    with pytest.raises(AcbuildError) as info:
        parse_text(text, variables=variables)
    return info.value.render()


def test_grammar_is_shipped() -> None:
    assert "WORD" in grammar_text()


EXAMPLE = """\
# An example covering every instruction
BEGIN scratch
BEGIN ./busybox.aci AS build
NAME example.com/hello
LABEL version=1.0.0 os=linux arch=amd64
ANNOTATION authors="Ada <ada@example.com>" homepage=https://example.com
ENV GREETING="Hello AppC" MODE=prod
COPY hello /bin/hello
COPY --chown=1000:1000 --mode=0755 ["src dir", "/opt/app"]
COPY a.txt b.txt conf/ /etc/app/
COPY --from=build /out/app /bin/app
EXEC /bin/hello --loud
USER 0
GROUP 0
SUPPLEMENTARY-GIDS 10 20
WORKDIR /
PORT http tcp 8080 --count=1 --socket-activated
MOUNT data /var/lib/data --read-only
ISOLATOR resource/memory {"limit": "512M"}
EVENT-HANDLER pre-start /bin/setup --init
DEPENDENCY example.com/base:1.0 --image-id=sha512-abc --label=os=linux --size=1234
PATH-WHITELIST /bin/hello /etc/motd
RUN /bin/sh -c 'echo built > /etc/motd'
RUN --network=host --env=DEBUG=1 --workdir=/src --user=1000 --timeout=5m make
RUN ["/bin/busybox", "--install", "-s", "/bin"]
SIGN ada@example.com
"""


def test_every_instruction() -> None:
    got = parse_text(EXAMPLE)
    assert [type(i) for i in got] == [
        ins.Begin, ins.Begin, ins.Name, ins.Label, ins.Annotation, ins.Env, ins.Copy, ins.Copy,
        ins.Copy, ins.Copy, ins.Exec, ins.User, ins.Group, ins.SupplementaryGids, ins.Workdir,
        ins.Port, ins.Mount, ins.Isolator, ins.EventHandler, ins.Dependency, ins.PathWhitelist,
        ins.Run, ins.Run, ins.Run, ins.Sign,
    ]
    lines = EXAMPLE.splitlines()
    for instruction in got:
        assert instruction.span.column == 1
        assert instruction.span.source_line == lines[instruction.span.line - 1]
        assert instruction.text == instruction.span.source_line
        assert instruction.span.length == len(ins.keyword(instruction))


def fields(instruction: ins.Instruction) -> dict[str, object]:
    skip = {"span", "text"}
    return {k: getattr(instruction, k) for k in instruction.__slots__ if k not in skip}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("BEGIN scratch", {"base": "scratch", "stage": None}),
        ("begin ./busybox.aci as build", {"base": "./busybox.aci", "stage": "build"}),
        ("BEGIN docker-archive:img.tar AS b", {"base": "docker-archive:img.tar", "stage": "b"}),
        ("NAME example.com/hello", {"name": "example.com/hello"}),
        ("LABEL version=1.0.0 os=linux", {"pairs": (("version", "1.0.0"), ("os", "linux"))}),
        ('ANNOTATION authors="Ada <a@b>" "x=y z"', {"pairs": (("authors", "Ada <a@b>"),
                                                             ("x", "y z"))}),
        ("ENV A= B=a=b", {"pairs": (("A", ""), ("B", "a=b"))}),
        ("COPY hello /bin/hello", {"sources": ("hello",), "dest": "/bin/hello",
                                   "from_stage": None, "chown": None, "mode": None}),
        ('COPY --chown=1000:1000 --mode=0755 ["src dir", "/opt/app"]',
         {"sources": ("src dir",), "dest": "/opt/app", "from_stage": None,
          "chown": "1000:1000", "mode": 0o755}),
        ('COPY ["a", "b dir", "/dst/"]', {"sources": ("a", "b dir"), "dest": "/dst/",
                                          "from_stage": None, "chown": None, "mode": None}),
        ("COPY a.txt b.txt conf/ /etc/app/", {"sources": ("a.txt", "b.txt", "conf/"),
                                              "dest": "/etc/app/", "from_stage": None,
                                              "chown": None, "mode": None}),
        ("COPY --from=build --mode=644 /out/app /bin/app",
         {"sources": ("/out/app",), "dest": "/bin/app", "from_stage": "build", "chown": None,
          "mode": 0o644}),
        ("EXEC /bin/hello --loud", {"argv": ("/bin/hello", "--loud")}),
        ('EXEC ["/bin/sh", "-c", "echo a b"]', {"argv": ("/bin/sh", "-c", "echo a b")}),
        ("USER 0", {"user": "0"}),
        ("GROUP wheel", {"group": "wheel"}),
        ("SUPPLEMENTARY-GIDS 10 20", {"gids": (10, 20)}),
        ("SUPPLEMENTARY-GIDS [10, 20]", {"gids": (10, 20)}),
        ("WORKDIR /srv", {"path": "/srv"}),
        ("PORT http tcp 8080 --count=2 --socket-activated",
         {"name": "http", "protocol": "tcp", "port": 8080, "count": 2,
          "socket_activated": True}),
        ("PORT --count=3 dns udp 53", {"name": "dns", "protocol": "udp", "port": 53,
                                       "count": 3, "socket_activated": False}),
        ("MOUNT data /var/lib/data --read-only", {"name": "data", "path": "/var/lib/data",
                                                  "read_only": True}),
        ("MOUNT --read-only data /d", {"name": "data", "path": "/d", "read_only": True}),
        ("MOUNT data /d", {"name": "data", "path": "/d", "read_only": False}),
        ('ISOLATOR resource/memory {"limit": "512M", "a": [1, 2]}',
         {"name": "resource/memory", "value_json": '{"a":[1,2],"limit":"512M"}'}),
        ("EVENT-HANDLER pre-start /bin/setup --init",
         {"event": "pre-start", "argv": ("/bin/setup", "--init")}),
        ('EVENT-HANDLER post-stop ["/bin/x", "y z"]', {"event": "post-stop",
                                                       "argv": ("/bin/x", "y z")}),
        ("DEPENDENCY example.com/base:1.0,arch=amd64 --image-id=sha512-abc --label=os=linux "
         "--size=1234",
         {"reference": "example.com/base:1.0,arch=amd64", "image_name": "example.com/base",
          "labels": (("version", "1.0"), ("arch", "amd64"), ("os", "linux")),
          "image_id": "sha512-abc", "size": 1234}),
        ("DEPENDENCY --size=1 example.com/base", {
            "reference": "example.com/base", "image_name": "example.com/base", "labels": (),
            "image_id": None, "size": 1}),
        ("PATH-WHITELIST /bin/hello /etc/motd", {"paths": ("/bin/hello", "/etc/motd")}),
        ('PATH-WHITELIST ["/a b", "/c"]', {"paths": ("/a b", "/c")}),
        ("SIGN ada@example.com", {"key": "ada@example.com"}),
        ("RUN /bin/sh -c 'echo built > /etc/motd'",
         {"argv": ("/bin/sh", "-c", "echo built > /etc/motd"), "network": "none", "env": (),
          "workdir": None, "user": None, "timeout": None, "pids": None, "memory": None,
          "mounts": ()}),
        ("RUN --network=host --env=DEBUG=1 --env=B=2 --workdir=/src --user=1000 "
         "--timeout=1.5m make -j2",
         {"argv": ("make", "-j2"), "network": "host", "env": (("DEBUG", "1"), ("B", "2")),
          "workdir": "/src", "user": "1000", "timeout": 90.0, "pids": None, "memory": None,
          "mounts": ()}),
        ('RUN ["/bin/busybox", "--install", "-s", "/bin"]',
         {"argv": ("/bin/busybox", "--install", "-s", "/bin"), "network": "none", "env": (),
          "workdir": None, "user": None, "timeout": None, "pids": None, "memory": None,
          "mounts": ()}),
        ("RUN make --network=host", {"argv": ("make", "--network=host"), "network": "none",
                                     "env": (), "workdir": None, "user": None,
                                     "timeout": None, "pids": None, "memory": None,
          "mounts": ()}),
        ("RUN -- --weird", {"argv": ("--weird",), "network": "none", "env": (),
                            "workdir": None, "user": None, "timeout": None, "pids": None,
                            "memory": None, "mounts": ()}),
    ],
)
def test_instruction_fields(line: str, expected: dict[str, object]) -> None:
    assert fields(one(line)) == expected


def test_keywords_are_case_insensitive() -> None:
    assert isinstance(one("copy a b"), ins.Copy)
    assert isinstance(one("Event-Handler pre-start /x"), ins.EventHandler)


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("'a b'", "a b"),
        ('"a b"', "a b"),
        ('"a \\" b"', 'a " b'),
        ('"C:\\path"', "C:\\path"),
        ("'single \\ kept'", "single \\ kept"),
        ("a\\ b", "a b"),
        ("pre'mid dle'\"post x\"", "premid dlepost x"),
        ("\"it's\"", "it's"),
        ("#not-a-comment", "#not-a-comment"),
    ],
)
def test_quoting(word: str, value: str) -> None:
    run = one(f"RUN echo {word}")
    assert isinstance(run, ins.Run)
    assert run.argv == ("echo", value)


def test_hash_later_in_a_line_is_text() -> None:
    run = one("RUN echo a # b")
    assert isinstance(run, ins.Run)
    assert run.argv == ("echo", "a", "#", "b")


def test_full_line_comments_and_blank_lines_are_skipped() -> None:
    got = parse_text("# c\n\n   # indented comment\nNAME a\n\n")
    assert [type(i) for i in got] == [ins.Name]
    assert got[0].span.line == 4


def test_continuation_joins_with_one_space() -> None:
    text = "NAME x\nRUN make \\\n    -j2 \\\n# comment inside is skipped\n\n    all\nUSER 0\n"
    run, user = parse_text(text)[1:]
    assert isinstance(run, ins.Run)
    assert run.argv == ("make", "-j2", "all")
    assert run.text == "RUN make -j2 all"
    assert run.span == Span(file="Acfile", line=2, column=1, length=3,
                            source_line="RUN make \\")
    assert user.span.line == 7


def test_continuation_inside_quotes() -> None:
    run = one('RUN echo "a \\\n b"')
    assert isinstance(run, ins.Run)
    assert run.argv == ("echo", "a b")


def test_comment_does_not_continue() -> None:
    assert [type(i) for i in parse_text("# a \\\nNAME x\n")] == [ins.Name]


def test_leading_whitespace_and_trailing_backslash_at_end() -> None:
    run = one("   RUN a \\")
    assert run.span.column == 4
    assert run.text == "RUN a"


def test_every_instruction_is_one_step_in_order() -> None:
    got = parse_text("BEGIN scratch\nRUN a\nRUN b\n")
    assert [i.text for i in got] == ["BEGIN scratch", "RUN a", "RUN b"]


def test_templating_in_parse_text() -> None:
    text = "{% for b in bins.split(',') %}\nCOPY {{ b }} /bin/\n{% endfor %}\n"
    got = parse_text(text, variables={"bins": "a,b"})
    assert [(i.span.line, i.text) for i in got] == [(2, "COPY a /bin/"), (2, "COPY b /bin/")]


def test_error_line_maps_through_template_blocks() -> None:
    text = (
        "BEGIN scratch\n{% if a %}\nRUN x\n{% endif %}\n{% for i in [1, 2] %}\n"
        "RUN {{ i }}\n{% endfor %}\nCOPPY a b\n"
    )
    assert error(text, a="") == (
        "Acfile:8:1: error: unknown instruction 'COPPY' (did you mean 'COPY'?)\n"
        "    COPPY a b\n"
        "    ^^^^^"
    )


# --- errors: exact text, line and column -------------------------------------------------------

ERRORS = [
    ("COPPY hello /bin/hello",
     "Acfile:1:1: error: unknown instruction 'COPPY' (did you mean 'COPY'?)\n"
     "    COPPY hello /bin/hello\n    ^^^^^"),
    ("FROBNICATE x", "Acfile:1:1: error: unknown instruction 'FROBNICATE'\n"
                     "    FROBNICATE x\n    ^^^^^^^^^^"),
    ("COPY --chwon=1 a b",
     "Acfile:1:6: error: unknown option '--chwon' for COPY (did you mean '--chown'?); "
     "allowed: --from, --chown, --mode\n    COPY --chwon=1 a b\n         ^^^^^^^"),
    ("LABEL --x=1 a=b", "Acfile:1:7: error: unknown option '--x': LABEL takes no options\n"
                        "    LABEL --x=1 a=b\n          ^^^"),
    ("COPY --from a b", "Acfile:1:6: error: option --from needs a value: --from=VALUE\n"
                        "    COPY --from a b\n         ^^^^^^"),
    ("MOUNT a /b --read-only=yes", "Acfile:1:12: error: option --read-only takes no value\n"
                                   "    MOUNT a /b --read-only=yes\n"
                                   "               ^^^^^^^^^^^^^^^"),
    ("COPY --mode=1 --mode=2 a b", "Acfile:1:15: error: option --mode given more than once\n"
                                   "    COPY --mode=1 --mode=2 a b\n"
                                   "                  ^^^^^^^^"),
    ("MOUNT data", "Acfile:1:11: error: missing PATH for MOUNT\n    MOUNT data\n"
                   "              ^\n    hint: usage: MOUNT NAME PATH [--read-only]"),
    ("NAME a b", "Acfile:1:8: error: unexpected argument 'b'\n    NAME a b\n           ^\n"
                 "    hint: usage: NAME IMAGE-NAME"),
    ("PORT http tcp 80x", "Acfile:1:15: error: invalid port '80x': expected a whole number\n"
                          "    PORT http tcp 80x\n                  ^^^"),
    ("PORT http tcp 80 --count=-1",
     "Acfile:1:26: error: invalid --count '-1': expected a whole number\n"
     "    PORT http tcp 80 --count=-1\n                             ^^"),
    ("DEPENDENCY a.com/b --size=big",
     "Acfile:1:27: error: invalid --size 'big': expected a whole number\n"
     "    DEPENDENCY a.com/b --size=big\n                              ^^^"),
    ("SUPPLEMENTARY-GIDS 10 x",
     "Acfile:1:23: error: invalid group ID 'x': expected a whole number\n"
     "    SUPPLEMENTARY-GIDS 10 x\n                          ^"),
    ("COPY --mode=0999 a b",
     "Acfile:1:13: error: invalid --mode '0999': expected octal permission bits like 0755\n"
     "    COPY --mode=0999 a b\n                ^^^^"),
    ("RUN --timeout=5x a",
     "Acfile:1:15: error: invalid --timeout: invalid duration '5x': expected a number with "
     "an optional unit s, m or h (30, 30s, 5m, 1.5h)\n    RUN --timeout=5x a\n"
     "                  ^^"),
    ("RUN --network=wifi a",
     "Acfile:1:15: error: invalid --network 'wifi': expected none or host\n"
     "    RUN --network=wifi a\n                  ^^^^"),
    ('RUN echo "unterminated', "Acfile:1:10: error: unterminated double-quoted string\n"
                               "    RUN echo \"unterminated\n             ^"),
    ("RUN echo 'open", "Acfile:1:10: error: unterminated single-quoted string\n"
                       "    RUN echo 'open\n             ^"),
    ('COPY ["a", "b"', "Acfile:1:15: error: malformed JSON array: Expecting ',' delimiter\n"
                       '    COPY ["a", "b"\n                  ^'),
    ('EXEC ["a", 1]', "Acfile:1:6: error: a command must be a JSON array of strings\n"
                      '    EXEC ["a", 1]\n         ^^^^^^^^'),
    ('ISOLATOR resource/memory {"limit": 512M}',
     "Acfile:1:39: error: malformed ISOLATOR value: Expecting ',' delimiter\n"
     '    ISOLATOR resource/memory {"limit": 512M}\n                                          ^'),
    ("ISOLATOR resource/memory", "Acfile:1:25: error: missing VALUE for ISOLATOR\n"
                                 "    ISOLATOR resource/memory\n                            ^\n"
                                 "    hint: usage: ISOLATOR NAME JSON-VALUE"),
    ("LABEL version", "Acfile:1:7: error: expected KEY=VALUE for LABEL, got 'version'\n"
                      "    LABEL version\n          ^^^^^^^"),
    ("ENV =x", "Acfile:1:5: error: empty name in '=x': expected KEY=VALUE\n"
               "    ENV =x\n        ^^"),
    ("RUN --env=FOO a", "Acfile:1:11: error: expected KEY=VALUE for --env, got 'FOO'\n"
                        "    RUN --env=FOO a\n              ^^^"),
    ("COPY a b c", "Acfile:1:10: error: COPY with several sources needs a directory "
                   "destination ending in '/': 'c/'\n    COPY a b c\n             ^"),
    ("COPY a", "Acfile:1:7: error: COPY needs a source and a destination\n    COPY a\n"
               "          ^\n    hint: usage: COPY [--from=STAGE] [--chown=USER[:GROUP]] "
               "[--mode=0755] SRC... DEST"),
    ("RUN", "Acfile:1:4: error: empty command for RUN\n    RUN\n       ^"),
    ("RUN --user=0", "Acfile:1:13: error: empty command for RUN\n    RUN --user=0\n"
                     "                ^"),
    ("EXEC []", "Acfile:1:6: error: empty command for EXEC\n    EXEC []\n         ^^"),
    ("BEGIN x AS", "Acfile:1:9: error: missing stage name after AS\n    BEGIN x AS\n"
                   "            ^^"),
    ("BEGIN x Y z", "Acfile:1:9: error: unexpected argument 'Y': expected AS <stage>\n"
                    "    BEGIN x Y z\n            ^"),
    ("BEGIN", "Acfile:1:6: error: missing base for BEGIN\n    BEGIN\n         ^\n"
              "    hint: usage: BEGIN scratch | BEGIN <path or image> [AS <stage>]"),
    ("EVENT-HANDLER start /x",
     "Acfile:1:15: error: unknown event 'start': expected pre-start or post-stop\n"
     "    EVENT-HANDLER start /x\n                  ^^^^^"),
    ("DEPENDENCY a.com/b,os",
     "Acfile:1:12: error: invalid label 'os' in 'a.com/b,os': expected NAME=VALUE\n"
     "    DEPENDENCY a.com/b,os\n               ^^^^^^^^^^"),
    ("COPY --chown=:0 a b", "Acfile:1:14: error: invalid --chown ':0': expected USER[:GROUP]\n"
                            "    COPY --chown=:0 a b\n                 ^^"),
    ("SUPPLEMENTARY-GIDS [1, true]",
     "Acfile:1:20: error: SUPPLEMENTARY-GIDS must be a JSON array of whole numbers\n"
     "    SUPPLEMENTARY-GIDS [1, true]\n                       ^^^^^^^^^"),
    ('EXEC ["a", NaN]', "Acfile:1:6: error: malformed JSON array: NaN is not allowed in JSON\n"
                        '    EXEC ["a", NaN]\n         ^^^^^^^^^^'),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=[t for t, _ in ERRORS])
def test_error_text(text: str, expected: str) -> None:
    assert error(text) == expected


def test_error_on_a_continued_line_points_at_the_physical_line() -> None:
    text = "RUN a \\\n    --b \\\n    \"c\n"
    assert error(text) == (
        "Acfile:3:5: error: unterminated double-quoted string\n"
        '        "c\n'
        "        ^"
    )


def test_option_error_on_a_continued_line() -> None:
    text = "COPY \\\n  --chwon=0 \\\n  a b\n"
    assert error(text).startswith("Acfile:2:3: error: unknown option '--chwon'")


def test_all_errors_of_a_file_are_collected() -> None:
    with pytest.raises(ErrorGroup) as info:
        parse_text("BEGIN scratch\nCOPPY a b\nNAME\nPORT a tcp x --count=y\n")
    got = [(e.span.line, e.span.column, e.message) for e in info.value.errors if e.span]
    assert got == [
        (2, 1, "unknown instruction 'COPPY' (did you mean 'COPY'?)"),
        (3, 5, "missing IMAGE-NAME for NAME"),
        (4, 12, "invalid port 'x': expected a whole number"),
        (4, 22, "invalid --count 'y': expected a whole number"),
    ]


def test_single_error_is_not_a_group() -> None:
    with pytest.raises(AcfileError) as info:
        parse_text("NAME\n")
    assert not isinstance(info.value, ErrorGroup)


def test_long_words_are_shortened_in_messages() -> None:
    message = error("X" * 100 + " a")
    assert "unknown instruction 'XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX…'" in message


def test_options_after_positionals_only_where_allowed() -> None:
    copy = one("COPY a --mode=0755 /d/")
    assert isinstance(copy, ins.Copy)
    assert copy.sources == ("a", "--mode=0755")
    assert copy.mode is None


def test_json_array_of_a_path_starting_with_bracket_needs_quotes() -> None:
    copy = one("COPY '[x]' /d")
    assert isinstance(copy, ins.Copy)
    assert copy.sources == ("[x]",)


# --- helpers others call -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1.5m", 90.0), (".5s", 0.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m", "-1s", "1e3", "0", "0s", "1.5.2m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(AcfileError, match="invalid duration"):
        parse_duration(text)


def test_split_image_reference() -> None:
    assert split_image_reference("a.com/b:1.0,os=linux") == (
        "a.com/b", (("version", "1.0"), ("os", "linux")))
    assert split_image_reference("a.com/b") == ("a.com/b", ())
    assert split_image_reference("a.com/b,arch=amd64") == ("a.com/b", (("arch", "amd64"),))


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (":1.0", "missing image name in ':1.0'"),
        ("a:", "empty version in 'a:'"),
        ("a,os", "invalid label 'os' in 'a,os': expected NAME=VALUE"),
        ("a,=x", "invalid label '=x' in 'a,=x': expected NAME=VALUE"),
        ("a:1,version=2", "label 'version' given more than once in 'a:1,version=2'"),
    ],
)
def test_split_image_reference_errors(ref: str, message: str) -> None:
    with pytest.raises(AcfileError) as info:
        split_image_reference(ref)
    assert info.value.message == message


# --- hostile input -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_only_acbuild_errors(text: str) -> None:
    try:
        parse_text(text)
    except AcbuildError as e:
        assert e.render()


_ALPHABET = st.sampled_from(
    ["RUN", "COPY", "PORT", "ISOLATOR", " ", "\n", "\\\n", "'", '"', "[", "]", "{", "}", "#",
     "--", "=", ",", "a", "1", "{{", "}}", "{%", "%}", "\x00", "\t", "\r", ":"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ALPHABET, max_size=40).map("".join))
def test_fuzz_acfile_shaped_text(text: str) -> None:
    try:
        parse_text(text)
    except AcbuildError as e:
        assert e.render()


@pytest.mark.parametrize(
    "text",
    [
        "\x00\x01\xff\ufffd" * 500,
        "RUN " + "a" * 1_000_000,
        "RUN " + "[" * 100_000,
        "ISOLATOR x " + "[" * 100_000 + "]" * 100_000,
        "{{" * 5000,
        "RUN \\\n" * 5000 + "x",
        "PORT a tcp " + "9" * 5000,
    ],
    ids=["binary", "long-line", "deep-json", "deep-isolator", "deep-template",
         "many-continuations", "huge-number"],
)
def test_hostile_input_gives_acfile_errors(text: str) -> None:
    try:
        parse_text(text)
    except AcbuildError as e:
        assert isinstance(e, AcfileError)
