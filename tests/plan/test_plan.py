"""Tests for acbuild.plan.plan: base references, stages, steps, and the semantic errors' texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.acfile import instructions as ins
from acbuild.acfile.parse import parse_text
from acbuild.errors import AcbuildError, AcfileError, ErrorGroup, Span
from acbuild.plan.baseref import (
    DockerArchive,
    ImageName,
    LocalImage,
    OciArchive,
    OciLayout,
    RegistryImage,
    Scratch,
    parse_base,
)
from acbuild.plan.plan import Plan, make_plan

CTX = Path("/ctx/app")


def plan(text: str, **kw: object) -> Plan:
    return make_plan(parse_text(text), acfile_dir=CTX, **kw)  # type: ignore[arg-type]


def errors(text: str, **kw: object) -> str:
    with pytest.raises(AcbuildError) as info:
        plan(text, **kw)
    return info.value.render()


# ---- BEGIN forms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scratch", Scratch()),
        ("docker-archive:img.tar", DockerArchive(path=CTX / "img.tar", ref=None)),
        (
            "docker-archive:/x/img.tar:busybox:1.36",
            DockerArchive(path=Path("/x/img.tar"), ref="busybox:1.36"),
        ),
        ("oci:layout", OciLayout(path=CTX / "layout", ref=None)),
        ("oci:../layout:v1", OciLayout(path=CTX / "../layout", ref="v1")),
        ("oci-archive:a.tar:latest", OciArchive(path=CTX / "a.tar", ref="latest")),
        ("/abs/base.aci", LocalImage(path=Path("/abs/base.aci"))),
        ("./base.aci", LocalImage(path=CTX / "./base.aci")),
        ("../outside/rootfs", LocalImage(path=CTX / "../outside/rootfs")),
        ("example.com/base", ImageName(name="example.com/base", labels=())),
        (
            "example.com/base:1.2,os=linux,arch=amd64",
            ImageName(
                name="example.com/base",
                labels=(("version", "1.2"), ("os", "linux"), ("arch", "amd64")),
            ),
        ),
    ],
)
def test_parse_base(text: str, expected: object) -> None:
    assert parse_base(text, CTX) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Example.com/base", "image name 'Example.com/base' is not an ACIdentifier"),
        ("example.com/base:", "empty version in 'example.com/base:'"),
        ("a,os", "invalid label 'os' in 'a,os': expected NAME=VALUE"),
        ("a:1,version=2", "label 'version' given more than once in 'a:1,version=2'"),
        ("a,Os=linux", "label name 'Os' is not an ACIdentifier"),
        ("oci:", "oci: needs a path, as in 'oci:./image.tar'"),
    ],
)
def test_parse_base_errors(text: str, message: str) -> None:
    with pytest.raises(AcfileError) as info:
        parse_base(text, CTX)
    assert info.value.message.startswith(message)


def test_docker_registry_reference_is_a_registry_base() -> None:
    assert parse_base("docker://busybox:1.36", CTX) == RegistryImage(
        reference="docker://busybox:1.36")
    assert plan("BEGIN docker://busybox\nNAME example.com/a\n").stages[0].base == \
        RegistryImage(reference="docker://busybox")


def test_other_url_schemes_get_a_hint() -> None:
    assert errors("BEGIN https://example.com/busybox\nNAME example.com/a\n") == (
        "Acfile:1:7: error: 'https://example.com/busybox' is not an image name: "
        "the only registry scheme is docker://\n"
        "    BEGIN https://example.com/busybox\n"
        "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "    hint: as in BEGIN docker://busybox:1.36"
    )


# ---- stages and steps ---------------------------------------------------------------------------

MULTI = """\
BEGIN scratch AS tools
RUN true
BEGIN scratch AS unused
RUN false
BEGIN ./base.aci AS build
COPY --from=tools /bin/x /bin/x
BEGIN scratch
COPY --from=build /out /app
NAME example.com/app
SIGN one@example.com
"""


def test_stages_not_needed_are_dropped_and_steps_numbered_across_stages() -> None:
    p = plan(MULTI)
    assert [(s.index, s.name) for s in p.stages] == [(0, "tools"), (2, "build"), (3, None)]
    assert p.target.index == 3
    assert p.total_steps == 8
    steps = [
        (st.number, st.total, st.stage, st.instruction.span.line)
        for s in p.stages
        for st in s.steps
    ]
    assert steps == [
        (1, 8, 0, 1), (2, 8, 0, 2), (3, 8, 2, 5), (4, 8, 2, 6),
        (5, 8, 3, 7), (6, 8, 3, 8), (7, 8, 3, 9), (8, 8, 3, 10),
    ]  # fmt: skip
    assert isinstance(p.stages[0].steps[0].instruction, ins.Begin)
    assert p.stages[1].base == LocalImage(path=CTX / "./base.aci")
    assert p.stage_named("build").index == 2
    assert p.file == "Acfile"
    assert all(st.key is None for s in p.stages for st in s.steps)


def test_target_selects_a_stage_and_its_sign_keys_only() -> None:
    text = MULTI.replace("RUN true", "NAME example.com/tools\nSIGN three@example.com")
    p = plan(text, target="tools", extra_sign_keys=("three@example.com",))
    assert [s.name for s in p.stages] == ["tools"]
    assert p.sign_keys == ("three@example.com",)  # one@ signs only the last stage
    assert plan(MULTI, extra_sign_keys=("one@example.com",)).sign_keys == ("one@example.com",)


def test_unknown_target() -> None:
    assert errors(MULTI, target="nope") == (
        "error: unknown target stage 'nope'\n    hint: stages: tools, unused, build"
    )


def test_target_stage_needs_a_name_but_others_do_not() -> None:
    assert errors("BEGIN scratch AS a\nNAME example.com/a\nBEGIN scratch\nRUN true\n") == (
        "error: no NAME given: add a line such as 'NAME example.com/app'"
    )
    assert (
        plan("BEGIN scratch AS a\nNAME example.com/a\nBEGIN scratch\n", target="a").target.name
        == "a"
    )


def test_copy_from_must_name_an_earlier_stage() -> None:
    text = (
        "BEGIN scratch AS a\nCOPY --from=b /x /x\nCOPY --from=a /x /x\n"
        "BEGIN scratch AS b\nNAME example.com/b\n"
    )
    assert errors(text) == (
        "Acfile:2:6: error: COPY --from=b: no earlier stage is named 'b'\n"
        "    COPY --from=b /x /x\n"
        "         ^^^^^^^^\n"
        "Acfile:3:6: error: COPY --from=a names the stage it is in\n"
        "    COPY --from=a /x /x\n"
        "         ^^^^^^^^"
    )


def test_duplicate_stage_names() -> None:
    out = errors("BEGIN scratch AS a\nBEGIN scratch AS a\nNAME example.com/a\n")
    assert out.startswith("Acfile:2:18: error: stage 'a' is already defined")


def test_begin_must_come_first() -> None:
    out = errors("NAME example.com/a\nBEGIN scratch\nNAME example.com/a\n")
    assert out.startswith("Acfile:1:1: error: BEGIN must be the first instruction\n")


def test_empty_acfile() -> None:
    with pytest.raises(AcfileError, match="the Acfile has no instructions"):
        make_plan((), acfile_dir=CTX)


# ---- semantic errors ---------------------------------------------------------------------------


def one_error(line: str, *, name: bool = True) -> str:
    text = "BEGIN scratch\n" + ("NAME example.com/a\n" if name else "") + line + "\n"
    return errors(text).split("\n")[0]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("LABEL Version=1", "Acfile:3:7: error: label name 'Version' is not an ACIdentifier"),
        ("LABEL name=x", "Acfile:3:7: error: 'name' cannot be a label: the image name is"),
        ("LABEL version=", "Acfile:3:7: error: label 'version' must not be empty"),
        ("LABEL os=plan9", "Acfile:3:7: error: bad os 'plan9' (must be one of: darwin, freebsd"),
        ("LABEL os=darwin arch=amd64", "Acfile:3:17: error: bad arch 'amd64' for darwin"),
        ("LABEL arch=x86_64", "Acfile:3:7: error: bad arch 'x86_64' for linux"),
        ("ANNOTATION Created=x", "Acfile:3:12: error: annotation name 'Created' is not an"),
        ("ANNOTATION created=today", "Acfile:3:12: error: annotation 'created' 'today' is not an"),
        ("ANNOTATION homepage=example.com", "Acfile:3:12: error: annotation 'homepage'"),
        ("ENV 1A=x", "Acfile:3:5: error: environment variable name '1A' is not valid"),
        ("WORKDIR srv", "Acfile:3:9: error: WORKDIR 'srv' must be an absolute path"),
        (
            "PORT http tcp 80\nPORT http udp 81",
            "Acfile:4:6: error: port 'http' is already defined on line 3",
        ),
        ("PORT Web tcp 80", "Acfile:3:6: error: port name 'Web' is not an ACName"),
        ("PORT web tcp 70000", "Acfile:3:14: error: port 70000 is out of range (1-65535)"),
        ("PORT web tcp 65535 --count=2", "Acfile:3:14: error: port range 65535-65536 ends beyond"),
        ("PORT web tcp 80 --count=0", "Acfile:3:14: error: port count 0 must be at least 1"),
        ("MOUNT Data /data", "Acfile:3:7: error: mount point name 'Data' is not an ACName"),
        ("MOUNT data data", "Acfile:3:12: error: mount point path 'data' must be an absolute path"),
        ("ISOLATOR os/linux/nope true", "Acfile:3:10: error: unknown isolator 'os/linux/nope'"),
        (
            'ISOLATOR resource/memory {"limit": "lots"}',
            "Acfile:3:1: error: isolator resource/memory: limit 'lots' is not a quantity",
        ),
        (
            "DEPENDENCY Example.com/dep",
            "Acfile:3:12: error: dependency name 'Example.com/dep' is not",
        ),
        (
            "DEPENDENCY example.com/dep --image-id=sha512-zz",
            "Acfile:3:39: error: image ID 'sha512-zz'",
        ),
        ("PATH-WHITELIST /bin bin/sh", "Acfile:3:21: error: PATH-WHITELIST entry 'bin/sh' must be"),
        (
            "RUN --workdir=tmp true",
            "Acfile:3:15: error: RUN --workdir 'tmp' must be an absolute path",
        ),
        ("RUN --env=1X=y true", "Acfile:3:11: error: environment variable name '1X' is not valid"),
        ("COPY a b", "Acfile:3:8: error: COPY destination 'b' must be an absolute path"),
    ],
)
def test_semantic_errors(line: str, expected: str) -> None:
    assert one_error(line).startswith(expected)


def test_name_error_has_a_hint_with_a_valid_form() -> None:
    assert errors("BEGIN scratch\nNAME Example.com/My-App!\n") == (
        "Acfile:2:6: error: image name 'Example.com/My-App!' is not an ACIdentifier\n"
        "    NAME Example.com/My-App!\n"
        "         ^^^^^^^^^^^^^^^^^^^\n"
        "    hint: lower-case letters, digits, '-', '.', '_', '~' and '/', starting and ending "
        "with a letter or digit, e.g. 'NAME example.com/my-app'"
    )


def test_all_errors_are_collected_in_file_order() -> None:
    with pytest.raises(ErrorGroup) as info:
        plan("BEGIN scratch\nWORKDIR rel\nPORT X tcp 0\nENV 9=z\n")
    assert [(e.span.line if e.span else None, e.message) for e in info.value.errors] == [
        (2, "WORKDIR 'rel' must be an absolute path"),
        (
            3,
            "port name 'X' is not an ACName "
            "(lower-case letters and digits, separated by single '-')",
        ),
        (3, "port 0 is out of range (1-65535)"),
        (
            4,
            "environment variable name '9' is not valid "
            "(a letter or '_', then letters, digits, '_', '.' or '-')",
        ),
        (None, "no NAME given: add a line such as 'NAME example.com/app'"),
    ]


def test_label_checks_use_the_final_labels_of_the_stage() -> None:
    # arch set first for another os, then os changed: the final pair is what counts
    assert plan("BEGIN scratch\nNAME example.com/a\nLABEL arch=x86_64\nLABEL os=darwin\n")
    # a non-scratch base brings its own os: an arch alone is left to the final manifest check
    assert plan("BEGIN ./b.aci\nNAME example.com/a\nLABEL arch=aarch64\n")


def test_valid_file_with_every_manifest_instruction() -> None:
    text = """\
BEGIN scratch
NAME example.com/app
LABEL version=1.0 os=linux arch=amd64
ANNOTATION created=2024-01-02T03:04:05Z homepage=https://example.com
ENV PATH=/bin LANG=C.UTF-8
EXEC /bin/app --serve
USER 1000
GROUP 1000
SUPPLEMENTARY-GIDS 10 20
WORKDIR /srv
PORT http tcp 8080 --count=2
MOUNT data /data --read-only
ISOLATOR resource/memory {"limit": "1G"}
EVENT-HANDLER pre-start /bin/prepare
DEPENDENCY example.com/base:1.0,os=linux --image-id=sha512-%s
PATH-WHITELIST /bin/app /etc
COPY --chown=app:app --mode=0644 conf /etc/conf
RUN --workdir=/srv --env=A=b true
""" % ("a" * 128)
    p = plan(text)
    assert p.total_steps == 18
    assert [type(st.instruction).__name__ for st in p.target.steps][:3] == [
        "Begin",
        "Name",
        "Label",
    ]


def test_checks_the_parser_may_also_make() -> None:
    # Values the parser lets through today are still checked here, with the place of the token.
    line = "COPY --chown=a:b:c a /b"
    span = Span(file="Acfile", line=2, column=1, length=4, source_line=line)
    handler_line = "EVENT-HANDLER on-start /bin/x"
    handler_span = Span(file="Acfile", line=3, column=1, length=13, source_line=handler_line)
    items = [
        ins.Begin(base="scratch", span=Span(file="Acfile", line=1), text="BEGIN scratch"),
        ins.Copy(sources=("a",), dest="/b", chown="a:b:c", span=span, text=line),
        ins.EventHandler(event="on-start", argv=("/bin/x",), span=handler_span, text=handler_line),
        ins.Name(name="example.com/a", span=Span(file="Acfile", line=4), text="NAME"),
    ]
    with pytest.raises(ErrorGroup) as info:
        make_plan(items, acfile_dir=CTX)
    assert [e.render().split("\n")[0] for e in info.value.errors] == [
        "Acfile:2:14: error: --chown=a:b:c is not written as user[:group]",
        "Acfile:3:15: error: event handler 'on-start' is not one of: pre-start, post-stop",
    ]


def test_an_image_is_signed_with_one_key() -> None:
    text = "BEGIN scratch\nNAME example.com/a\nSIGN ada@example.com\nSIGN bob@example.com\n"
    assert errors(text) == (
        "Acfile:4:1: error: an image is signed with one key, but 2 are given: "
        "ada@example.com, bob@example.com\n"
        "    SIGN bob@example.com\n"
        "    ^^^^\n"
        "    hint: keep one SIGN line (or one --sign)"
    )
    plan = make_plan(parse_text("BEGIN scratch\nNAME example.com/a\nSIGN ada@example.com\n"),
                     acfile_dir=Path("/ctx"), extra_sign_keys=["ada@example.com"])
    assert plan.sign_keys == ("ada@example.com",)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            'ISOLATOR resource/memory {"limit": "1G"}\nISOLATOR resource/memory {"limit": "2G"}',
            "Acfile:4:10: error: ISOLATOR 'resource/memory' is already set on line 3\n"
            '    ISOLATOR resource/memory {"limit": "2G"}\n'
            "             ^^^^^^^^^^^^^^^\n"
            "    hint: keep one ISOLATOR resource/memory line: this one would replace line 3's",
        ),
        (
            "MOUNT data /data\nMOUNT data /srv",
            "Acfile:4:7: error: MOUNT 'data' is already set on line 3",
        ),
        (
            "EVENT-HANDLER pre-start /a\nEVENT-HANDLER pre-start /b",
            "Acfile:4:15: error: EVENT-HANDLER 'pre-start' is already set on line 3",
        ),
        ("ENV A=1\nENV B=2 A=3", "Acfile:4:9: error: ENV 'A' is already set on line 3"),
        ("ENV A=1 A=2", "Acfile:3:5: error: ENV 'A' is already set on line 3"),
        (
            'ISOLATOR os/linux/seccomp-retain-set {"set": ["read"]}\n'
            'ISOLATOR os/linux/seccomp-remove-set {"set": ["reboot"]}',
            "Acfile:4:10: error: ISOLATOR os/linux/seccomp-remove-set cannot be used with "
            "os/linux/seccomp-retain-set (line 3)",
        ),
        (
            'ISOLATOR os/linux/capabilities-remove-set {"set": ["CAP_KILL"]}\n'
            'ISOLATOR os/linux/capabilities-retain-set {"set": ["CAP_CHOWN"]}',
            "Acfile:4:10: error: ISOLATOR os/linux/capabilities-retain-set cannot be used with "
            "os/linux/capabilities-remove-set (line 3)",
        ),
    ],
)
def test_a_repeated_name_is_an_error_at_the_second_line(lines: str, expected: str) -> None:
    text = "BEGIN scratch\nNAME example.com/a\n" + lines + "\n"
    assert errors(text).startswith(expected)


def test_env_may_change_after_a_run_that_used_it() -> None:
    assert plan("BEGIN ./b.aci\nNAME example.com/a\nENV P=/a\nRUN true\nENV P=/b\n")
