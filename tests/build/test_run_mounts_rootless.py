"""RUN --mount in a rootless build (as `nobody`): a cache mount belongs to the builder and
persists, a secret is readable as uid 0 inside, and owners only root builds can give are
refused with a message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.sandbox.test_runstep import NOBODY, nobody_env, shared_dir  # noqa: F401
from tests.support.busybox import make_busybox_rootfs
from tests.support.sandboxrun import needs_sandbox

pytestmark = needs_sandbox


def build_as_nobody(env: tuple[str, dict[str, str]], top: Path, run: str,
                    *extra: str) -> subprocess.CompletedProcess[str]:
    (top / "ctx/Acfile").write_text(f"BEGIN ../rootfs\nNAME example.com/rootless\nRUN {run}\n"
                                    "EXEC /bin/sh\n")
    python, environ = env
    return subprocess.run([*NOBODY, python, "-m", "acbuild", "build", "--progress", "plain",
                           "--allow-path", str(top), str(top / "ctx/Acfile"), "-o",
                           str(top / "out.aci"), *extra],
                          env=environ, cwd="/", capture_output=True, text=True)


def test_cache_and_secret_mounts_rootless(nobody_env: tuple[str, dict[str, str]],  # noqa: F811
                                          shared_dir: Path) -> None:  # noqa: F811
    make_busybox_rootfs(shared_dir / "rootfs")
    (shared_dir / "ctx").mkdir()
    (shared_dir / "token").write_text("rootless-token-value\n")
    for path in (shared_dir, *shared_dir.rglob("*")):
        os.lchown(path, 65534, 65534)
    run = ("--mount=type=cache,target=/c --mount=type=secret,id=t,required=true /bin/sh -c "
           "'echo x >> /c/runs; echo runs=$(wc -l < /c/runs) id=$(id -u) "
           "secret=$(wc -c < /run/secrets/t) owner=$(stat -c %u /c)'")
    secret = ("--secret", f"id=t,src={shared_dir / 'token'}")
    first = build_as_nobody(nobody_env, shared_dir, run, *secret)
    assert first.returncode == 0, first.stderr
    assert "| runs=1 id=0 secret=21 owner=0" in first.stderr
    again = build_as_nobody(nobody_env, shared_dir, run, "--no-cache", *secret)
    assert "| runs=2 " in again.stderr, again.stderr
    (data,) = Path(nobody_env[1]["XDG_CACHE_HOME"]).glob("acbuild-py/build-cache/mounts/*/data.0")
    assert data.stat().st_uid == 65534  # the builder's own directory on the host
    assert "rootless-token-value" not in first.stderr + again.stderr
    refused = build_as_nobody(nobody_env, shared_dir,
                              "--mount=type=cache,target=/d,uid=1000 true")
    assert refused.returncode == 1
    assert ("RUN --mount=type=cache owned by 1000:0 needs a build as root: a rootless build "
            "has only uid 0 inside") in refused.stderr


def test_context_bind_rootless(nobody_env: tuple[str, dict[str, str]],  # noqa: F811
                               shared_dir: Path) -> None:  # noqa: F811
    """The view of the context in a user namespace that maps only the builder: its files
    and directories show as uid 0's, read-only, what .acignore excludes absent."""
    make_busybox_rootfs(shared_dir / "rootfs")
    (shared_dir / "ctx/src/sub").mkdir(parents=True)
    (shared_dir / "ctx/src/sub/f").write_text("rootless view\n")
    (shared_dir / "ctx/src/sub").chmod(0o750)
    (shared_dir / "ctx/src/.env").write_text("hidden\n")
    (shared_dir / "ctx/.acignore").write_text(".env\n")
    for path in (shared_dir, *shared_dir.rglob("*")):
        os.lchown(path, 65534, 65534)
    got = build_as_nobody(nobody_env, shared_dir,
                          "--mount=type=bind,source=src,target=/s /bin/sh -c "
                          "'cat /s/sub/f; ls -A /s; stat -c %u:%a /s/sub /s/sub/f; "
                          "touch /s/new 2>/dev/null || echo ro'")
    assert got.returncode == 0, got.stderr
    lines = [x.split("| ", 1)[1] for x in got.stderr.splitlines() if "] | " in x]
    assert lines == ["rootless view", "sub", "0:750", "0:644", "ro"]
