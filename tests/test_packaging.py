"""The wheel ships every subpackage and the grammar (the README's install is not editable)."""

from __future__ import annotations

import tomllib
from pathlib import Path

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
