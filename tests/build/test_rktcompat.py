"""Build-time warnings for images rkt would refuse (tests/rkt shows rkt refusing them)."""

from __future__ import annotations

from pathlib import Path

from acbuild.build.rktcompat import rkt_warnings
from acbuild.image.manifest import ImageManifest, NameValue
from tests.support.cli import acbuild


def _m(name: str, **labels: str) -> ImageManifest:
    return ImageManifest(name=name, labels=tuple(NameValue(name=k, value=v)
                                                 for k, v in labels.items()))


def test_rkt_warnings() -> None:
    assert rkt_warnings(_m("example.com/app", os="linux", arch="amd64")) == ()
    assert rkt_warnings(_m("localhost/app", os="linux", arch="amd64")) == ()
    assert rkt_warnings(_m("example.com/app", os="darwin")) == (
        "the image has no arch label: rkt refuses to run it and no rkt fetch by name "
        "matches it",)
    assert rkt_warnings(_m("example.com/app", os="freebsd", arch="amd64")) == (
        "the image is for os=freebsd: rkt runs and fetches os=linux images only",)
    assert rkt_warnings(_m("hello", os="linux", arch="amd64")) == (
        "rkt fetch hello cannot discover this image: 'hello' is not a host name (discovery "
        "asks https://hello/...)",)


def test_build_says_so(hello_context: Path, tmp_path: Path) -> None:
    acfile = hello_context / "Acfile"
    acfile.write_text(acfile.read_text().replace("NAME example.com/hello",
                                                 "NAME hello\nLABEL os=darwin"))
    r = acbuild("build", acfile, "-o", tmp_path / "x.aci")
    assert r.code == 0, r.stderr
    assert "warning: the image has no arch label: rkt refuses to run it" in r.stderr
    assert "warning: rkt fetch hello cannot discover this image" in r.stderr
    r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "y.aci")  # cached
    assert r.code == 0 and "warning: rkt fetch hello cannot discover" in r.stderr
