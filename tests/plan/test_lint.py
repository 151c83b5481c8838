"""Lint: each rule with a case it reports and one it does not; ignore comments; the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.errors import AcfileError
from acbuild.plan.lint import RULES, lint_text
from tests.support.cli import acbuild

GOOD = """BEGIN scratch
NAME example.com/app
LABEL version=1.0.0
EXEC /bin/app
"""


def rules(text: str, context: Path, **variables: str) -> list[tuple[str, int]]:
    found = lint_text(text, file="Acfile", context=context, variables=variables)
    return [(f.rule, f.span.line) for f in found]


@pytest.mark.parametrize(
    ("rule", "bad", "good"),
    [
        ("AC001", "BEGIN scratch\nNAME a.com/x\nLABEL version=1\n", GOOD),
        ("AC002", "BEGIN example.com/base\n" + GOOD.split("\n", 1)[1],
         "BEGIN example.com/base:1.2\n" + GOOD.split("\n", 1)[1]),
        ("AC003", GOOD + "DEPENDENCY example.com/dep\n",
         GOOD + "DEPENDENCY example.com/dep --image-id=sha512-" + "a" * 32 + "\n"),
        ("AC003", GOOD + "DEPENDENCY example.com/dep,os=linux\n",
         GOOD + "DEPENDENCY example.com/dep:2.0\n"),
        ("AC004", GOOD + "RUN --network=host wget http://x/y.tgz\n",
         GOOD + "RUN --network=host sh -c 'wget http://x/y.tgz && sha256sum -c y.sha256'\n"),
        ("AC004", GOOD + "RUN --network=host wget http://x/y.tgz\n",
         GOOD + "RUN wget http://x/y.tgz\n"),
        ("AC005", GOOD + "COPY secret.txt /etc/secret\n", GOOD + "COPY app /bin/app\n"),
        ("AC005", GOOD + "RUN --mount=source=secret.txt,target=/s make\n",
         GOOD + "RUN --mount=source=app,target=/s --mount=type=cache,target=/c make\n"),
        ("AC008", GOOD + "RUN --mount=type=secret,id=t,src=secret.txt make\n",
         GOOD + "RUN --mount=type=secret,id=t make\n"),
        ("AC006", "BEGIN scratch\nNAME a.com/x\nEXEC /x\n", GOOD),
        ("AC007", GOOD + "ENV API_TOKEN=abc123\n", GOOD + "ENV TOKEN_URL=https://x\n"),
        ("AC007", GOOD + "ENV HOME_DIR=AKIAIOSFODNN7EXAMPLE\n", GOOD + "ENV PASSWORD=\n"),
        ("AC007", GOOD + 'ENV X="-----BEGIN RSA PRIVATE KEY-----"\n',
         GOOD + "ENV DB_PASSWORD={{ password }}\n"),
    ],
)
def test_each_rule_reports_the_bad_case_only(
    rule: str, bad: str, good: str, tmp_path: Path
) -> None:
    (tmp_path / ".acignore").write_text("secret.txt\n")
    (tmp_path / "secret.txt").write_text("s")
    (tmp_path / "app").write_text("a")
    assert rule in RULES
    assert rule in [r for r, _ in rules(bad, tmp_path)]
    assert rule not in [r for r, _ in rules(good, tmp_path, password="x")]


def test_good_file_is_clean(tmp_path: Path) -> None:
    assert rules(GOOD, tmp_path) == []


def test_findings_point_at_the_instruction_line(tmp_path: Path) -> None:
    text = GOOD + "\nDEPENDENCY example.com/a\nENV GITHUB_TOKEN=ghp_" + "x" * 36 + "\n"
    assert rules(text, tmp_path) == [("AC003", 6), ("AC007", 7)]


def test_ignore_comment_on_the_line_before_silences_only_its_rules(tmp_path: Path) -> None:
    text = GOOD + "# acbuild: ignore=AC003\nDEPENDENCY example.com/a\n" \
                  "# acbuild: ignore=AC004\nDEPENDENCY example.com/b\n"
    assert rules(text, tmp_path) == [("AC003", 8)]
    several = GOOD + "# acbuild: ignore=ac004, AC007\nRUN --network=host --env=A=1 env\n"
    assert rules(several, tmp_path) == []


def test_a_hash_later_in_the_line_does_not_ignore(tmp_path: Path) -> None:
    text = GOOD + "DEPENDENCY example.com/a # acbuild: ignore=AC003\n"
    with pytest.raises(AcfileError):  # the '#' words are ordinary arguments, hence an error
        rules(text, tmp_path)


def test_cli_output_and_exit_status(tmp_path: Path) -> None:
    (tmp_path / "Acfile").write_text(GOOD + "DEPENDENCY example.com/dep\n")
    (tmp_path / "Clean").write_text(GOOD)
    r = acbuild("lint", "Acfile", "Clean", cwd=tmp_path)
    assert r.code == 1
    assert r.stdout == (
        "Acfile:5:1: warning[AC003]: DEPENDENCY example.com/dep is not pinned: add :VERSION "
        "or --image-id=sha512-…\n"
    )
    assert acbuild("lint", "Clean", cwd=tmp_path).code == 0


def test_cli_reports_acfile_errors_as_errors(tmp_path: Path) -> None:
    (tmp_path / "Acfile").write_text("BEGIN scratch\nFROB x\n")
    r = acbuild("lint", "Acfile", cwd=tmp_path)
    assert r.code == 1
    assert r.stderr.startswith("Acfile:2:1: error: unknown instruction 'FROB'")
