"""The entry point: what a registry verb's start-up loads."""

from __future__ import annotations

import subprocess
import sys

from tests.support.registry import free_port


def test_a_registry_verb_loads_httpx_without_its_command_line_client() -> None:
    # Nothing listens on the port: the pull fails at once, after httpx is loaded and used.
    port = free_port()
    probe = ("import sys; from acbuild.cli.main import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print('LOADED', [m for m in ('httpx', 'rich', 'pygments') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", probe, "-q", "pull",
                        f"docker://127.0.0.1:{port}/a/b:1", "--insecure-registry",
                        f"127.0.0.1:{port}"], capture_output=True, text=True, check=True)
    assert "nothing is listening" in r.stderr or "refused" in r.stderr, r.stderr
    assert r.stdout.splitlines()[-1] == "LOADED ['httpx']"
