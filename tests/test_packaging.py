"""The wheel ships every subpackage and the grammar (the README's install is not editable)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "acbuild").rglob("__init__.py")
    }
    assert found | {"acbuild.grammar"} == set(config["packages"])
    assert config["package-dir"]["acbuild.grammar"] == "grammar"
    assert (REPO / "grammar" / "acfile.lark").is_file()


def test_grammar_is_found_as_package_data() -> None:
    from acbuild.acfile.parse import grammar_text

    assert grammar_text() == (REPO / "grammar" / "acfile.lark").read_text()


def test_every_layer_is_in_the_contract_and_on_the_architecture_page() -> None:
    layers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    named = {
        part.strip().removeprefix("acbuild.")
        for layer in layers["contracts"][0]["layers"]
        for part in layer.split("|")
    }
    page = (REPO / "docs" / "dev" / "architecture.md").read_text()
    for package in (REPO / "acbuild").iterdir():
        if (package / "__init__.py").is_file():
            assert package.name in named, f"{package.name} is in no layer of the contract"
            assert f"{package.name}/" in page, f"{package.name}/ is not on the architecture page"
            init = (package / "__init__.py").read_text()
            assert init.startswith('"""'), f"{package.name} has no docstring"


# click-man (0.6) still calls a click helper that click 8.3 deprecates; the pages it writes
# are compared below, so the deprecation costs nothing here.
@pytest.mark.filterwarnings("ignore:'click.utils.make_default_short_help':DeprecationWarning")
def test_man_pages_match_the_cli(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "docs"))
    try:
        from generate_man import write
    finally:
        sys.path.remove(str(REPO / "docs"))
    fresh = {p.name: p.read_text() for p in write(tmp_path)}
    shipped = {p.name: p.read_text() for p in (REPO / "man").glob("*.1")}
    assert fresh == shipped, "man pages are out of date: run python docs/generate_man.py"
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["data-files"]["share/man/man1"] == ["man/*.1"]
