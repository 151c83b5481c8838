"""Fuzzing (atheris): the Acfile front end, render -> parse -> plan, on any bytes.

Anything but AcbuildError with a placed span is a crash; run as described in fuzz/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from acbuild.acfile.parse import parse_text
    from acbuild.errors import AcbuildError, ErrorGroup
    from acbuild.plan.plan import make_plan


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        make_plan(parse_text(text), acfile_dir=Path("/nonexistent"))
    except AcbuildError as e:
        errors = e.errors if isinstance(e, ErrorGroup) else (e,)
        for err in errors:
            if err.span is None and "no NAME given" not in err.message \
                    and "no instructions" not in err.message:
                raise AssertionError(f"error without a place: {err.render()}") from None
        e.render()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
