"""A FIFO (or a device) where the CLI reads an input fails at once with one line naming it.

A plain open() of a FIFO with no writer blocks for ever and /dev/zero reads for ever: the
Acfile, a --var-file, a BEGIN file the cache key hashes, the blobs of an OCI layout, an
archive, a lint or fmt target, a passphrase file, a key, a signature, a CA file each hung
the command (red team RT4-5). Each case here runs the real CLI with a timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cli import Result, acbuild
from tests.support.gpghelp import make_aci
from tests.support.ocifixtures import file as layer_file
from tests.support.ocifixtures import raw_layout, tar_bytes

_LAYER = "application/vnd.oci.image.layer.v1.tar"
_TIMEOUT = 20


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _context(tmp: Path, acfile: str = "BEGIN scratch\nNAME example.com/t\nCOPY a.txt /a\n",
             ) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a\n")
    (ctx / "Acfile").write_text(acfile)
    return ctx


def _layout(tmp: Path) -> tuple[Path, dict[str, Path]]:
    """An OCI layout and its index, manifest, config and layer files."""
    tar = tar_bytes([layer_file("etc/x", "y\n")])
    layout = raw_layout(tmp / "layout", [(tar, tar, _LAYER)])
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = blobs / index["manifests"][0]["digest"].split(":")[1]
    doc = json.loads(manifest.read_bytes())
    return layout, {"index": layout / "index.json", "manifest": manifest,
                    "config": blobs / doc["config"]["digest"].split(":")[1],
                    "layer": blobs / doc["layers"][0]["digest"].split(":")[1]}


def _in_place(path: Path, device: str | None = None) -> Path:
    """``path`` replaced by a FIFO, or by a symlink to ``device``."""
    path.unlink()
    if device is None:
        return _fifo(path)
    path.symlink_to(device)
    return path


# Each case: (tmp_path) -> (argv, the path the error names, what it says of it).
Case = Callable[[Path], tuple[list[str | Path], Path | str, str]]


def _acfile(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    fifo = _fifo(tmp / "Acfile.pipe")
    return ["build", "-f", fifo, _context(tmp), "-o", tmp / "o.aci"], fifo, "a FIFO"


def _acfile_device(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    return (["plan", "-f", "/dev/zero", _context(tmp)], "/dev/zero",
            "a character device")


def _var_file(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    fifo = _fifo(tmp / "vars.toml")
    ctx = _context(tmp)
    return ["build", "--var-file", fifo, ctx, "-o", tmp / "o.aci"], fifo, "a FIFO"


def _copy_source(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    ctx = _context(tmp, "BEGIN scratch\nNAME example.com/t\nCOPY pipe /pipe\n")
    _fifo(ctx / "pipe")
    return ["build", ctx, "-o", tmp / "o.aci"], "'pipe'", "is a fifo"


def _cache_key(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    # BEGIN of a file: the step cache's key hashes it before anything opens it as an image.
    ctx = _context(tmp, "BEGIN ./base.aci\nNAME example.com/t\n")
    fifo = _fifo(ctx / "base.aci")
    return ["build", ctx, "-o", tmp / "o.aci"], fifo, "not a regular file"


def _layout_blob(member: str, device: str | None = None) -> Case:
    def case(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
        layout, files = _layout(tmp)
        target = _in_place(files[member], device)
        shown = target.relative_to(layout) if member != "index" else "index.json"
        kind = "a FIFO" if device is None else "a character device"
        return ["convert", layout, "-o", tmp / "o.aci"], str(shown), kind
    return case


def _begin_layout(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    layout, files = _layout(tmp)
    _in_place(files["layer"])
    ctx = _context(tmp, f"BEGIN oci:{layout}\nNAME example.com/t\n")
    return (["build", "--allow-path", tmp, ctx, "-o", tmp / "o.aci"],
            str(files["layer"].relative_to(layout)), "a FIFO")


def _archive(kind: str | None) -> Case:
    def case(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
        fifo = _fifo(tmp / "image.tar")
        how = [] if kind is None else ["--input-format", kind]
        return ["convert", *how, fifo, "-o", tmp / "o.aci"], fifo, "a FIFO"
    return case


def _lint(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    fifo = _fifo(tmp / "Acfile")
    return ["lint", fifo], fifo, "a FIFO"


def _fmt(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    fifo = _fifo(tmp / "Acfile")
    return ["fmt", "--check", fifo], fifo, "a FIFO"


def _passphrase(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    fifo = _fifo(tmp / "passphrase")
    image = make_aci(tmp / "x.aci", "example.com/x")
    return ["sign", "--key", "nobody", "--passphrase-file", fifo, image], fifo, "a FIFO"


def _trust_key(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    fifo = _fifo(tmp / "key.asc")
    return (["trust", "--trust-store", tmp / "store", "--prefix", "example.com", fifo], fifo,
            "a FIFO")


def _validate(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    fifo = _fifo(tmp / "x.aci")
    return ["validate", fifo], fifo, "not a regular file"


def _signature(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    fifo = _fifo(tmp / "x.aci.sig")
    image = make_aci(tmp / "x.aci", "example.com/x")
    return ["verify", image, "--signature", fifo], fifo, "a FIFO"


def _ca_file(tmp: Path) -> tuple[list[str | Path], Path | str, str]:
    fifo = _fifo(tmp / "ca.pem")
    return (["fetch", "--ca-file", fifo, "--store", tmp / "store", "example.com/x"], fifo,
            "a FIFO")


CASES: dict[str, Case] = {
    "acfile": _acfile, "acfile-dev-zero": _acfile_device, "var-file": _var_file,
    "copy-source": _copy_source, "cache-key-begin-file": _cache_key,
    "oci-layer": _layout_blob("layer"), "oci-index": _layout_blob("index"),
    "oci-manifest": _layout_blob("manifest"),
    "oci-config-dev-zero": _layout_blob("config", "/dev/zero"),
    "oci-layer-dev-zero": _layout_blob("layer", "/dev/zero"),
    "begin-oci-layer": _begin_layout, "oci-archive": _archive("oci-archive"),
    "docker-archive": _archive("docker-archive"), "archive-detected": _archive(None),
    "lint": _lint, "fmt": _fmt, "passphrase-file": _passphrase, "trust-key": _trust_key,
    "validate": _validate, "verify-signature": _signature, "ca-file": _ca_file,
}


def _run(argv: list[str | Path], cwd: Path) -> Result:
    try:
        return acbuild(*argv, cwd=cwd, timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"acbuild-py {argv[0]} hung on a FIFO or device input "
                    f"(no exit in {_TIMEOUT} s)")


@pytest.mark.parametrize("name", CASES)
def test_a_fifo_or_device_input_fails_at_once_naming_it(tmp_path: Path, name: str) -> None:
    argv, named, says = CASES[name](tmp_path)
    r = _run(argv, tmp_path)
    assert r.code not in (0, 70), (r.code, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines()
             if str(named) in line and says in line]
    assert len(lines) == 1, r.stdout + r.stderr


def test_a_readable_var_file_and_layout_still_work(tmp_path: Path) -> None:
    """The same readers given regular files: a build with a --var-file, a convert of a
    layout, a validate of what it wrote."""
    ctx = _context(tmp_path, "BEGIN scratch\nNAME example.com/{{ app }}\nCOPY a.txt /a\n")
    (tmp_path / "vars.toml").write_text('app = "t"\n')
    r = _run(["build", "--var-file", tmp_path / "vars.toml", ctx, "-o", tmp_path / "o.aci"],
             tmp_path)
    assert r.code == 0, r.stderr
    layout, _ = _layout(tmp_path)
    r = _run(["convert", layout, "-o", tmp_path / "c.aci"], tmp_path)
    assert r.code == 0, r.stderr
    assert _run(["validate", tmp_path / "c.aci"], tmp_path).code == 0
