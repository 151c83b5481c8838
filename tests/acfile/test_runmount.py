"""Tests for acfile/runmount: RUN --mount specs as parsed, and every bad one as a
file:line:col error pointing at the field it is about."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.acfile import instructions as ins
from acbuild.acfile.parse import parse_text
from acbuild.errors import AcbuildError
from acbuild.plan.plan import make_plan


def mounts(text: str) -> tuple[ins.RunMount, ...]:
    (run,) = parse_text(text)
    assert isinstance(run, ins.Run)
    return run.mounts


def error(text: str) -> str:
    with pytest.raises(AcbuildError) as info:
        parse_text(text)
    return info.value.render()


def test_each_type_with_its_keys() -> None:
    cache, bind, secret = mounts(
        "RUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0700,uid=1,gid=2"
        " --mount=type=bind,src=app,dst=/src,from=build,ro"
        " --mount=type=secret,id=npm.token,required,mode=0440 make")
    assert cache == ins.RunMount(kind="cache", target="/root/.cache", id="pip",
                                 sharing="locked", mode=0o700, uid=1, gid=2)
    assert bind == ins.RunMount(kind="bind", target="/src", source="app", from_stage="build")
    assert secret == ins.RunMount(kind="secret", target="/run/secrets/npm.token",
                                  id="npm.token", required=True, mode=0o440)


def test_defaults_follow_buildkit() -> None:
    (bind,) = mounts("RUN --mount=target=/ctx make")  # type defaults to bind
    assert bind.kind == "bind" and bind.source is None
    (cache,) = mounts("RUN --mount=type=cache,target=/var/cache/apt/ make")
    assert cache.target == "/var/cache/apt" and cache.cache_id == "/var/cache/apt"
    assert cache.sharing == "shared"
    (secret,) = mounts("RUN --mount=type=secret,id=t make")
    assert not secret.required and secret.mode is None


@pytest.mark.parametrize(("text", "want"), [
    ("RUN --mount=type=tmpfs,target=/x make",
     "Acfile:1:13: error: unknown --mount type 'tmpfs': expected cache, bind or secret"),
    ("RUN --mount=type=cache make", "Acfile:1:13: error: --mount type=cache needs target=DIR"),
    ("RUN --mount=type=cache,target=x make",
     "Acfile:1:24: error: --mount target 'x' must be an absolute path"),
    ("RUN --mount=type=cache,target=/ make",
     "Acfile:1:24: error: --mount target '/' would hide the whole image"),
    ("RUN --mount=type=cache,target=/a/../.. make",
     "Acfile:1:24: error: --mount target '/a/../..' must not contain '..'"),
    ("RUN --mount=type=cache,target=/a,color=red make",
     "Acfile:1:34: error: unknown --mount key 'color'"),
    ("RUN --mount=type=cache,target=/a,sharing=all make",
     "Acfile:1:34: error: invalid sharing 'all': expected shared, private or locked"),
    ("RUN --mount=type=cache,target=/a,target=/b make",
     "Acfile:1:34: error: --mount key 'target' given more than once"),
    ("RUN --mount=type=cache,target=/proc/sys make",
     "Acfile:1:24: error: --mount target '/proc/sys': /proc belongs to the sandbox"),
    ("RUN --mount=type=bind,target=/dev make",
     "Acfile:1:23: error: --mount target '/dev': /dev belongs to the sandbox"),
    ("RUN --mount=type=cache,target=/run/secrets/x make",
     "Acfile:1:24: error: --mount target '/run/secrets/x': /run/secrets is where secrets "
     "are mounted"),
    ("RUN --mount=type=cache,target=/a --mount=type=bind,target=/a/ make",
     "Acfile:1:42: error: two --mount options for target '/a'"),
    ("RUN --mount=type=cache,target=/a --mount=type=bind,target=/a/b make",
     "Acfile:1:42: error: --mount target '/a/b' lies inside the target of another --mount "
     "('/a')"),
    ("RUN --mount=type=cache,target=/a,id=x --mount=type=cache,target=/b,id=x make",
     "Acfile:1:47: error: two cache mounts of id 'x' in one RUN"),
    ("RUN --mount=type=cache,target=/a --mount=type=cache,target=/b,id=/a make",
     "Acfile:1:42: error: two cache mounts of id '/a' in one RUN"),
    ("RUN --mount=type=bind,target=/a,source=../x make",
     "Acfile:1:33: error: --mount source '../x' must be a path without '..'"),
    ("RUN --mount=type=bind,target=/a,rw make",
     "Acfile:1:33: error: unknown --mount key 'rw'"),
    ("RUN --mount=type=bind,target=/a,readonly=false make",
     "Acfile:1:33: error: a bind mount is always read-only"),
    ("RUN --mount=type=cache,target=/a,from=x make",
     "Acfile:1:34: error: --mount key 'from' does not apply to type=cache"),
    ("RUN --mount=type=cache,target=/a,mode=rwx make",
     "Acfile:1:34: error: invalid mode 'rwx': expected octal permission bits like 0755"),
    ("RUN --mount=type=cache,target=/a,uid=-1 make",
     "Acfile:1:34: error: invalid uid '-1': expected a number below 4294967295"),
    ("RUN --mount=type=secret make", "Acfile:1:13: error: a secret --mount needs id=ID"),
    ("RUN --mount=type=secret,id=../etc/passwd make",
     "Acfile:1:25: error: invalid secret id '../etc/passwd'"),
    ("RUN --mount=type=secret,id=a/b make", "Acfile:1:25: error: invalid secret id 'a/b'"),
    ("RUN --mount=type=secret,id=.. make", "Acfile:1:25: error: invalid secret id '..'"),
    ("RUN --mount=type=secret,id=t,target=/etc/t make",
     "Acfile:1:30: error: --mount key 'target' does not apply to type=secret"),
    ("RUN --mount=type=secret,id=t,src=/home/me/.npmrc make",
     "Acfile:1:30: error: secret source '/home/me/.npmrc' must be a path in the build context"),
    ("RUN --mount=type=secret,id=t,required=maybe make",
     "Acfile:1:30: error: invalid required 'maybe': expected true or false"),
    ("RUN --mount=type=cache,target=/a,id= make",
     "Acfile:1:34: error: --mount key 'id' needs a value: id=VALUE"),
    ("RUN --mount=type=cache,,target=/a make",
     "Acfile:1:24: error: empty field in --mount (two commas?)"),
])
def test_bad_specs_point_at_their_field(text: str, want: str) -> None:
    assert error(text).startswith(want)


def test_quoted_spec_points_at_the_whole_word() -> None:
    got = error("RUN --mount='type=cache,target=x' make")
    assert got.startswith("Acfile:1:13: error: --mount target 'x' must be an absolute path")


def test_mount_option_needs_a_value() -> None:
    assert "option --mount needs a value" in error("RUN --mount make")


def test_every_mount_problem_is_reported_at_once() -> None:
    got = error("RUN --mount=type=x,target=/a --mount=type=cache,target=b make")
    assert "unknown --mount type 'x'" in got and "--mount target 'b'" in got


def plan_error(text: str) -> str:
    with pytest.raises(AcbuildError) as info:
        make_plan(parse_text(text), acfile_dir=Path("/nonexistent"))
    return info.value.render()


def test_from_must_name_an_earlier_stage() -> None:
    got = plan_error("BEGIN scratch AS a\nBEGIN scratch\nNAME x\n"
                     "RUN --mount=type=bind,from=b,target=/x make\n")
    assert got.startswith("Acfile:4:23: error: RUN --mount from=b: no earlier stage is named "
                          "'b'")
    assert "hint: stages before this one: a" in got
    got = plan_error("BEGIN scratch AS a\nNAME x\nRUN --mount=type=bind,from=a,target=/x make\n")
    assert "RUN --mount from=a names the stage it is in" in got


def test_a_stage_a_mount_reads_is_built() -> None:
    text = ("BEGIN scratch AS tools\nBEGIN scratch AS unused\nBEGIN scratch\nNAME x\n"
            "RUN --mount=type=bind,from=tools,target=/t make\n")
    plan = make_plan(parse_text(text), acfile_dir=Path("/nonexistent"))
    assert [s.name for s in plan.stages] == ["tools", None]
