"""The whole build through the real CLI: outputs, errors, stages, bases, determinism."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from tests.support import hostile
from tests.support.cli import acbuild, actool_validate

ID = re.compile(r"^sha512-[0-9a-f]{128}$")


def names(aci: Path) -> list[str]:
    with tarfile.open(aci) as t:
        return t.getnames()


def manifest_of(aci: Path) -> dict[str, object]:
    with tarfile.open(aci) as t:
        f = t.extractfile("manifest")
        assert f is not None
        return json.load(f)  # type: ignore[no-any-return]


def write_acfile(where: Path, text: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "Acfile"
    path.write_text(text)
    return path


def test_hello_example_builds_a_valid_image(hello_context: Path, tmp_path: Path) -> None:
    out = tmp_path / "hello.aci"
    r = acbuild("build", hello_context / "Acfile", "-o", out)
    assert r.code == 0, r.stderr
    assert ID.match(r.stdout.strip()) and r.stdout.count("\n") == 1  # only the ID on stdout
    actool_validate(out)
    assert names(out)[:3] == ["manifest", "rootfs", "rootfs/bin"]
    raw = gzip.decompress(out.read_bytes())
    assert r.stdout.strip() == "sha512-" + hashlib.sha512(raw).hexdigest()
    m = manifest_of(out)
    assert m["name"] == "example.com/hello"
    assert m["app"]["exec"] == ["/bin/hello"]  # type: ignore[index]
    assert "[6/8] COPY hello /bin/hello" in r.stderr
    assert "hello.c" not in "".join(names(out))  # .acignore keeps it out


def test_same_inputs_same_image_id_across_checkouts(
    hello_binary: Path, tmp_path: Path
) -> None:
    ids = []
    for i, umask in enumerate((0o022, 0o077)):
        ctx = tmp_path / f"checkout{i}" / ("deeper/" * i) / "hello"
        ctx.mkdir(parents=True)
        (ctx / "Acfile").write_text((Path(__file__).parents[2] / "examples" / "Acfiles"
                                     / "hello" / "Acfile").read_text())
        old = os.umask(umask)
        try:
            (ctx / "hello").write_bytes(hello_binary.read_bytes())
            (ctx / "hello").chmod(0o700 if umask == 0o077 else 0o755)
        finally:
            os.umask(old)
        os.utime(ctx / "hello", (1_000_000 * (i + 1),) * 2)
        r = acbuild("build", ctx / "Acfile", "-o", tmp_path / f"out{i}.aci")
        assert r.code == 0, r.stderr
        ids.append(r.stdout.strip())
    assert ids[0] == ids[1]
    assert (tmp_path / "out0.aci").read_bytes() == (tmp_path / "out1.aci").read_bytes()


def test_source_date_epoch_changes_mtimes_only(hello_context: Path, tmp_path: Path) -> None:
    a = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "a.aci")
    b = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "b.aci",
                env={"SOURCE_DATE_EPOCH": "1000"})
    assert a.code == b.code == 0
    assert a.stdout != b.stdout
    with tarfile.open(tmp_path / "b.aci") as t:
        assert {m.mtime for m in t.getmembers()} == {1000}


def test_unknown_instruction_is_reported_at_its_place(tmp_path: Path) -> None:
    acfile = write_acfile(tmp_path, "BEGIN scratch\nNAME example.com/x\nCOPPY hello /bin/hello\n")
    r = acbuild("build", "Acfile", "-o", "x.aci", cwd=tmp_path)
    assert r.code == 1
    assert r.stderr == (
        "Acfile:3:1: error: unknown instruction 'COPPY' (did you mean 'COPY'?)\n"
        "    COPPY hello /bin/hello\n"
        "    ^^^^^\n"
    )
    assert r.stdout == ""
    assert not (tmp_path / "x.aci").exists()
    assert acfile.exists()


def test_semantic_errors_are_all_reported(tmp_path: Path) -> None:
    write_acfile(tmp_path, "BEGIN scratch\nNAME Bad_Name\nPORT http tcp 99999\nWORKDIR rel\n")
    r = acbuild("build", "Acfile", cwd=tmp_path)
    assert r.code == 1
    lines = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert [line.split(": error:")[0] for line in lines] == [
        "Acfile:2:6", "Acfile:3:15", "Acfile:4:9"
    ]
    assert "Traceback" not in r.stderr


def test_missing_name_is_a_clear_error(tmp_path: Path) -> None:
    write_acfile(tmp_path, "BEGIN scratch\nEXEC /bin/true\n")
    r = acbuild("build", "Acfile", cwd=tmp_path)
    assert r.code == 1
    assert "no NAME given" in r.stderr


def test_missing_acfile(tmp_path: Path) -> None:
    r = acbuild("build", tmp_path / "nope" / "Acfile")
    assert r.code == 1
    assert r.stderr.strip() == f"error: Acfile not found: {tmp_path / 'nope' / 'Acfile'}"


def test_failed_build_leaves_previous_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "x.aci"
    out.write_bytes(b"previous image")
    write_acfile(tmp_path, "BEGIN scratch\nNAME example.com/x\nCOPY missing /x\n")
    r = acbuild("build", "Acfile", "-o", out, cwd=tmp_path)
    assert r.code == 1
    assert "Acfile:3:6: error: COPY source 'missing' not found" in r.stderr
    assert out.read_bytes() == b"previous image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Acfile", "x.aci"]


def test_output_mode_follows_umask(hello_context: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.aci"
    old = os.umask(0o027)
    try:
        r = acbuild("build", hello_context / "Acfile", "-o", out)
    finally:
        os.umask(old)
    assert r.code == 0, r.stderr
    assert out.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("compression", ["gzip", "xz", "bzip2", "none"])
def test_every_compression_is_valid(hello_context: Path, tmp_path: Path, compression: str) -> None:
    out = tmp_path / f"x-{compression}.aci"
    r = acbuild("build", hello_context / "Acfile", "-o", out, "--compression", compression)
    assert r.code == 0, r.stderr
    actool_validate(out)
    assert acbuild("validate", out).code == 0


def test_template_variables(tmp_path: Path) -> None:
    write_acfile(tmp_path, "BEGIN scratch\nNAME example.com/{{ app }}\n"
                 "{% if debug == 'yes' %}\nENV DEBUG=1\n{% endif %}\nEXEC /bin/{{ app }}\n")
    r = acbuild("build", "Acfile", "-o", "x.aci", "--var", "app=tool", "--var", "debug=yes",
                cwd=tmp_path)
    assert r.code == 0, r.stderr
    m = manifest_of(tmp_path / "x.aci")
    assert m["name"] == "example.com/tool"
    assert m["app"]["environment"] == [{"name": "DEBUG", "value": "1"}]  # type: ignore[index]
    r = acbuild("build", "Acfile", "-o", "x.aci", cwd=tmp_path)
    assert r.code == 1
    assert r.stderr == (
        "Acfile:2:21: error: undefined template variable 'app'\n"
        "    NAME example.com/{{ app }}\n"
        "                        ^^^\n"
        "    hint: pass it with --var app=VALUE or in a --var-file\n"
    )


def test_stages_copy_from_and_unneeded_stage_is_not_built(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("payload\n")
    write_acfile(tmp_path, (
        "BEGIN ./does-not-exist.aci AS unused\n"
        "BEGIN scratch AS build\n"
        "COPY data.txt /out/data.txt\n"
        "BEGIN scratch\n"
        "NAME example.com/thin\n"
        "COPY --from=build /out/data.txt /data.txt\n"
    ))
    r = acbuild("build", "Acfile", "-o", "x.aci", cwd=tmp_path)
    assert r.code == 0, r.stderr
    assert "[1/6] BEGIN scratch AS build" in r.stderr
    assert "does-not-exist" not in r.stderr
    assert "rootfs/data.txt" in names(tmp_path / "x.aci")
    assert "rootfs/out" not in names(tmp_path / "x.aci")
    actool_validate(tmp_path / "x.aci")
    r = acbuild("build", "Acfile", "-o", "b.aci", "--target", "build", cwd=tmp_path)
    assert r.code == 1
    assert "no NAME given" in r.stderr


def test_local_aci_base_is_inherited_without_path_whitelist(
    hello_context: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.aci"
    acfile = hello_context / "Acfile"
    acfile.write_text(acfile.read_text() + "PATH-WHITELIST /bin/hello\n")
    assert acbuild("build", acfile, "-o", base).code == 0
    write_acfile(tmp_path / "child", (
        "BEGIN ../base.aci\nNAME example.com/child\nLABEL version=2.0.0\n"
    ))
    r = acbuild("build", tmp_path / "child" / "Acfile", "-o", tmp_path / "child.aci",
                "--allow-path", tmp_path)
    assert r.code == 0, r.stderr
    m = manifest_of(tmp_path / "child.aci")
    assert m["name"] == "example.com/child"
    assert m["app"]["exec"] == ["/bin/hello"]  # type: ignore[index]
    assert "pathWhitelist" not in m
    assert {"name": "version", "value": "2.0.0"} in m["labels"]  # type: ignore[operator]
    assert "rootfs/bin/hello" in names(tmp_path / "child.aci")


def test_hostile_base_tarball_cannot_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    before = hostile.snapshot(tmp_path)
    evil = (hostile.Tar().dir("etc").symlink("etc/evil", str(outside))
            .file("etc/evil/pwned", b"gotcha").data())
    hostile.write(tmp_path / "evil.tar", evil)
    write_acfile(tmp_path / "ctx", "BEGIN ../evil.tar\nNAME example.com/evil\n")
    r = acbuild("build", tmp_path / "ctx" / "Acfile", "-o", tmp_path / "evil.aci",
                "--allow-path", tmp_path)
    assert r.code == 0, r.stderr
    assert not (outside / "pwned").exists()
    assert "Traceback" not in r.stderr
    if r.code == 0:
        with tarfile.open(tmp_path / "evil.aci") as t:
            link = t.getmember("rootfs/etc/evil")
            assert link.issym() and link.linkname == str(outside)
    after = hostile.snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k.startswith("outside")} == {
        k: v for k, v in before.items() if k.startswith("outside")
    }


def test_traversal_entry_in_base_is_rejected(tmp_path: Path) -> None:
    data = hostile.aci().file("rootfs/../../escaped", b"x").data()
    hostile.write(tmp_path / "evil.aci", data)
    write_acfile(tmp_path / "ctx", "BEGIN ../evil.aci\nNAME example.com/evil\n")
    r = acbuild("build", tmp_path / "ctx" / "Acfile", "-o", tmp_path / "out.aci",
                "--allow-path", tmp_path)
    assert r.code == 1
    assert f"{tmp_path / 'ctx' / 'Acfile'}:1:1: error: archive entry 'rootfs/../../escaped' " \
        "points outside the image" in r.stderr
    assert not (tmp_path / "escaped").exists()
    assert not (tmp_path / "out.aci").exists()


def test_internal_errors_have_no_traceback_unless_debug(tmp_path: Path) -> None:
    r = acbuild("manifest", tmp_path / "missing.aci")
    assert r.code == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ")


def test_options_are_accepted_before_and_after_the_verb(hello_context: Path,
                                                         tmp_path: Path) -> None:
    r = acbuild("-q", "build", hello_context / "Acfile", "-o", tmp_path / "a.aci")
    assert r.code == 0 and r.stderr == ""
    r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "a.aci", "--quiet")
    assert r.code == 0 and r.stderr == ""


def test_inspect_and_manifest(hello_context: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.aci"
    image_id = acbuild("build", hello_context / "Acfile", "-o", out).stdout.strip()
    r = acbuild("inspect", out)
    assert r.code == 0
    assert image_id in r.stdout and "hello" in r.stdout
    m = json.loads(acbuild("manifest", out).stdout)
    assert m["name"] == "example.com/hello"


def test_plain_rootfs_directory_base(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "motd").write_text("hi\n")
    (rootfs / "link").symlink_to("/etc/motd")
    write_acfile(tmp_path / "ctx", "BEGIN ../rootfs\nNAME example.com/dir\n")
    r = acbuild("build", tmp_path / "ctx" / "Acfile", "-o", tmp_path / "x.aci",
                "--allow-path", tmp_path)
    assert r.code == 0, r.stderr
    with tarfile.open(tmp_path / "x.aci") as t:
        assert t.getmember("rootfs/link").linkname == "/etc/motd"
        f = t.extractfile("rootfs/etc/motd")
        assert f is not None and f.read() == b"hi\n"
    actool_validate(tmp_path / "x.aci")


def test_image_id_is_over_the_uncompressed_tar(hello_context: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.aci"
    image_id = acbuild("build", hello_context / "Acfile", "-o", out,
                       "--compression", "xz").stdout.strip()
    import lzma

    assert image_id == "sha512-" + hashlib.sha512(lzma.decompress(out.read_bytes())).hexdigest()
    assert io.BytesIO  # keep io imported for readers of this module


def test_sign_with_oci_output_fails_before_any_work(hello_context: Path, tmp_path: Path) -> None:
    acfile = hello_context / "Acfile"
    acfile.write_text(acfile.read_text() + "SIGN ada@example.com\n")
    r = acbuild("build", acfile, "--format", "oci", "-o", tmp_path / "layout")
    assert r.code == 1
    assert "error: SIGN is only supported for ACI output" in r.stderr
    assert "[1/" not in r.stderr  # no step ran
    assert not (tmp_path / "layout").exists()


def test_parse_and_semantic_errors_are_reported_together(tmp_path: Path) -> None:
    write_acfile(tmp_path, "BEGIN scratch\nNAME Bad_Name\nCOPPY a /a\nWORKDIR rel\n")
    r = acbuild("build", "Acfile", cwd=tmp_path)
    assert r.code == 1
    places = [line.split(": error: ")[0] for line in r.stderr.splitlines() if ": error: " in line]
    assert places == ["Acfile:2:6", "Acfile:3:1", "Acfile:4:9"]
    assert "unknown instruction 'COPPY'" in r.stderr
