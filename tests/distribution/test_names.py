"""Class 9 of the security issue: names and label values from a manifest never choose a path
outside where they belong, nor borrow another name's keys (real gpg, real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from acbuild.distribution.fetch import FetchOptions, fetch
from acbuild.distribution.imagestore import ImageStore
from acbuild.distribution.publish import publish
from acbuild.errors import AcbuildError
from acbuild.report import NullReporter
from acbuild.trust.sign import sign_image
from acbuild.trust.truststore import TrustStore, prefix_matches
from acbuild.trust.verify import verify_image
from tests.support.cli import acbuild
from tests.support.gpghelp import Keys, make_aci
from tests.support.hostile import snapshot

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys


def signed(tmp_path: Path, keys: Keys, name: str, labels: dict[str, str]) -> Path:
    image = make_aci(tmp_path / "img.aci", name, labels)
    sign_image(image, keys.fpr["alice"], gpg_home=keys.home, reporter=NullReporter())
    return image


def everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("name", "labels"), [
    ("example.com/../../escaped", {"version": "1"}),
    ("example.com/app/..", {"version": "1"}),
    ("example.com//escaped", {"version": "1"}),
    ("example.com/app", {"version": "../../../escaped"}),
    ("example.com/app", {"version": "1", "os": "linux/../../../escaped", "arch": "amd64"}),
    ("example.com/app", {"version": "1", "arch": "/escaped"}),
])
def test_publish_never_writes_outside_repo(gpgkeys: Keys, tmp_path: Path, name: str,
                                           labels: dict[str, str]) -> None:
    (tmp_path / "in").mkdir()
    image = signed(tmp_path / "in", gpgkeys, name, labels)
    outside = tmp_path / "www"
    repo = outside / "deep" / "repo"
    repo.mkdir(parents=True)
    r = acbuild("publish", image, "--repo", repo, "--url-base", "http://127.0.0.1/",
                "--gpg-home", gpgkeys.home)
    assert r.code == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert everything(outside) == {"deep", "deep/repo"}


def test_publish_does_not_follow_a_symlink_planted_in_repo(gpgkeys: Keys,
                                                            tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    image = signed(tmp_path / "in", gpgkeys, "example.com/tools/app", {"version": "1"})
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    (repo / "tools").symlink_to(elsewhere)
    with pytest.raises(AcbuildError, match="is a symlink or not a directory"):
        publish(image, repo=repo, url_base="http://x/", gpg_home=gpgkeys.home,
                reporter=NullReporter())
    assert list(elsewhere.iterdir()) == []


def test_publish_replaces_a_planted_file_symlink_without_following_it(
        gpgkeys: Keys, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    image = signed(tmp_path / "in", gpgkeys, "example.com/app", {"version": "1"})
    repo, victim = tmp_path / "repo", tmp_path / "victim"
    (repo / "app").mkdir(parents=True)
    victim.write_text("precious\n")
    (repo / "app" / "app-1.aci").symlink_to(victim)
    (repo / "app" / "pubkeys.gpg").symlink_to(victim)
    publish(image, repo=repo, url_base="http://x/", gpg_home=gpgkeys.home,
            reporter=NullReporter())
    assert victim.read_text() == "precious\n"
    assert not (repo / "app" / "app-1.aci").is_symlink()
    (repo / "app" / "index.html").unlink()
    (repo / "app" / "index.html").symlink_to(victim)
    with pytest.raises(AcbuildError, match="cannot read"):
        publish(image, repo=repo, url_base="http://x/", gpg_home=gpgkeys.home,
                reporter=NullReporter())
    assert victim.read_text() == "precious\n"


def test_a_dotdot_name_does_not_borrow_a_prefix_key(gpgkeys: Keys, tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust")
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/app")
    for evil in ("example.com/app/../evil", "example.com/app/./x", "example.com/app//x"):
        (tmp_path / "d").mkdir(exist_ok=True)
        image = signed(tmp_path / "d", gpgkeys, evil, {})
        with pytest.raises(AcbuildError, match="is not an ACIdentifier"):
            verify_image(image, store)
        r = acbuild("verify", image, "--trust-store", store.root)
        assert r.code == 1 and "not an ACIdentifier" in r.stderr
        assert not prefix_matches("example.com/app", evil)
    assert prefix_matches("example.com/app", "example.com/app/sub")


def test_fetch_output_names_are_checked(tmp_path: Path) -> None:
    image = make_aci(tmp_path / "img.aci", "example.com/app", {"version": "../../escaped"})
    out = tmp_path / "a" / "b" / "out"
    r = acbuild("fetch", image, "--insecure-skip-verify", "--store", tmp_path / "store",
                "-o", out)
    assert r.code == 1, r.stderr
    assert "cannot be part of a file name" in r.stderr
    assert not (tmp_path / "escaped.aci").exists()
    assert not any(p.name.endswith("escaped.aci") for p in tmp_path.rglob("*"))


def test_store_takes_only_identifiers_and_image_ids(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    image = make_aci(tmp_path / "x.aci", "example.com/x")
    for bad_id in ("../../x", "sha512-../../x", "sha512-" + "0" * 127 + "/"):
        with pytest.raises(AcbuildError, match="is not an image ID"):
            store.aci_path(bad_id)
    with pytest.raises(AcbuildError, match="not an ACIdentifier"):
        store.add(image, None, image_id="sha512-" + "0" * 128, name="../x", labels=())
    with pytest.raises(AcbuildError, match="not an ACIdentifier"):
        store.find("example.com/../x", ())
    store.check()
    (store.root / "index.json").write_text(
        '{"version": 1, "images": [{"id": "../../etc/passwd", "name": "x", "labels": [],'
        ' "size": 1, "added": 1, "signed": true}]}')
    before = snapshot(tmp_path)
    with pytest.raises(AcbuildError, match="unreadable"):
        store.find("x", ())
    assert snapshot(tmp_path) == before
    assert os.path.exists("/etc/passwd")


def test_fetch_refuses_a_non_identifier_name(tmp_path: Path) -> None:
    image = make_aci(tmp_path / "img.aci", "Example.COM/../x")
    with pytest.raises(AcbuildError, match="not an ACIdentifier"):
        fetch(str(image), options=FetchOptions(skip_verify=True, store_dir=tmp_path / "s"),
              reporter=NullReporter())
