"""Conformance: the appc/spec Go reference's own test vectors, as images, through `validate`
and through actool; and the spec's example manifests as bases of a build.

The vectors (tests/image/appc_vectors.json) were read from the Go tests named in each one's
``from``; acbuild-py must give the reference's answer except where docs/conformance.md lists
the deviation and the spec sentence behind it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from acbuild.image.validate import check_image
from tests.support.cli import acbuild
from tests.support.hostile import Tar, compress
from tests.support.vectors import Vector, actool, actool_says_valid, load

VECTORS = load()
BY_ID = {v.id: v for v in VECTORS}
DOC = Path(__file__).parents[2] / "docs" / "conformance.md"


def doc_text() -> str:
    return " ".join(DOC.read_text().split())  # line breaks do not matter

# Where each actool disagrees with the Go reference's tests and the spec. actool reads a
# manifest with json.Unmarshal only, which never calls MountPoint.assertValid, and
# dereferences an isolator's missing value (a panic, recorded as None).
ACTOOL_MISSES = {
    "oracle": {"TestMountPointFromStringBad-4", "TestMountPointFromStringBad-5",
               "Isolator.UnmarshalJSON-1"},
    # Debian's 0.8.11 predates os/linux/apparmor-profile
    "debian": {"TestMountPointFromStringBad-4", "TestMountPointFromStringBad-5",
               "Isolator.UnmarshalJSON-1", "TestIsolatorUnmarshal-38",
               "TestNewLinuxAppArmorContext-1"},
}


def test_vector_ids_are_unique_and_sourced() -> None:
    assert len(BY_ID) == len(VECTORS)
    for v in VECTORS:
        path = v.source.split()[0]
        assert re.fullmatch(r"(schema|aci|ace|examples|spec)/[\w/.-]+", path), v.id


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.id)
def test_validate_agrees_with_the_reference(vector: Vector, tmp_path: Path) -> None:
    report = check_image(vector.image(tmp_path))
    assert (not report.problems) == vector.acbuild_valid, (vector.what, report.problems)


def test_every_deviation_is_documented() -> None:
    text = DOC.read_text()
    deviations = {v.deviation for v in VECTORS if v.deviation}
    for name in sorted(deviations):
        assert f"`{name}`" in text, f"docs/conformance.md does not explain deviation {name}"


def _agreement(vectors: list[Vector], answer: dict[str, bool | None]) -> tuple[int, int]:
    return sum(answer[v.id] == v.valid for v in vectors), len(vectors)


def test_the_documented_figures_are_measured(tmp_path: Path) -> None:
    answers = {v.id: not check_image(v.image(tmp_path)).problems for v in VECTORS}
    tests = [v for v in VECTORS if v.from_go_test]
    agree, total = _agreement(tests, dict(answers))
    text = doc_text()
    assert f"acbuild-py agrees with {agree} of {total} test vectors" in text
    agree_all, total_all = _agreement(VECTORS, dict(answers))
    assert f"{agree_all} of all {total_all} cases" in text


@pytest.mark.parametrize("which", ["oracle", "debian"])
def test_actool_agreement_is_as_recorded(which: str, tmp_path: Path) -> None:
    tool = actool(which)
    if tool is None:
        pytest.skip(f"actool ({which}) is not installed: nothing to compare with")
    answers = {v.id: actool_says_valid(tool, v.image(tmp_path)) for v in VECTORS}
    misses = {v.id for v in VECTORS if answers[v.id] != v.valid}
    assert misses == ACTOOL_MISSES[which]
    agree, total = _agreement([v for v in VECTORS if v.from_go_test], answers)
    assert f"actool ({which}) agrees with {agree} of {total}" in doc_text()


def test_every_difference_from_the_reference_names_its_deviation() -> None:
    differ = [v for v in VECTORS if v.acbuild_valid != v.valid]
    assert all(v.deviation for v in differ)
    # 3 test vectors and 7 other cases, as docs/conformance.md says
    assert (sum(v.from_go_test for v in differ), len(differ)) == (3, 10)


SPEC_EXAMPLES = ["spec-examples-image", "spec-aci-schema-example", "spec-ace-main",
                 "spec-ace-sidekick"]


@pytest.mark.parametrize("vid", SPEC_EXAMPLES)
def test_spec_examples_validate_with_warnings_only(vid: str, tmp_path: Path) -> None:
    report = check_image(BY_ID[vid].image(tmp_path))
    assert report.problems == []
    if vid in ("spec-examples-image", "spec-aci-schema-example"):
        assert any("'sha512-...'" in w and "no image will match it" in w
                   for w in report.warnings), report.warnings


def test_validate_cli_prints_warnings_and_exits_zero(tmp_path: Path) -> None:
    image = BY_ID["spec-examples-image"].image(tmp_path)
    r = acbuild("validate", image)
    assert r.code == 0, r.stderr
    assert f"{image}: valid" in r.stderr
    assert "warning: manifest: image ID 'sha512-...'" in r.stderr


@pytest.mark.parametrize("vid", SPEC_EXAMPLES)
def test_an_image_builds_on_each_spec_example(vid: str, tmp_path: Path) -> None:
    base = tmp_path / "base.aci"
    doc = BY_ID[vid].doc["manifest"]
    base.write_bytes(compress(Tar().file("manifest", json.dumps(doc).encode()).dir("rootfs")
                              .dir("rootfs/etc").file("rootfs/etc/hostname", b"x\n").data()))
    (tmp_path / "Acfile").write_text(
        "BEGIN ./base.aci\nNAME example.com/on-spec-example\nLABEL version=2.0.0\n")
    out = tmp_path / "out.aci"
    r = acbuild("build", tmp_path / "Acfile", "-o", out)
    assert r.code == 0, r.stderr
    built = check_image(out)
    assert built.problems == []
    r = acbuild("manifest", out)
    assert r.code == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["name"] == "example.com/on-spec-example"
    assert m["app"]["exec"] == doc["app"]["exec"]
