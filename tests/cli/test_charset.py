"""Which terminals get ASCII: the locale the user set, not the UTF-8 Python picks for a C one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from acbuild.cli.charset import AsciiStream


@pytest.mark.parametrize(("env", "utf8"), [
    ({"LANG": "C.UTF-8"}, True), ({"LC_ALL": "C.UTF-8", "LANG": "C"}, True),
    ({"LANG": "C"}, False), ({"LC_ALL": "C", "LANG": "C.UTF-8"}, False), ({}, False),
    ({"LANG": "en_US.ISO-8859-1"}, False), ({"LANG": "C.UTF-8", "TERM": "dumb"}, False),
])
def test_shows_utf8_follows_the_locale_set(env: dict[str, str], utf8: bool) -> None:
    probe = "import sys; from acbuild.cli.charset import shows_utf8; print(shows_utf8(sys.stderr))"
    out = subprocess.run([sys.executable, "-c", probe], env={"PATH": "/usr/bin:/bin", **env},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(utf8)


def test_ascii_stream_writes_ascii_and_has_no_buffer_to_write_around() -> None:
    import io

    inner = io.StringIO()
    stream = AsciiStream(inner)  # type: ignore[arg-type]
    stream.write("a\u2026 caf\u00e9\n")
    assert inner.getvalue() == "a... caf\\xe9\n"
    assert stream.encoding == "ascii" and not hasattr(stream, "buffer")
