"""The memory of pushed blobs: hints for mounts, never trusted, never an error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.distribution.registry import pushmemory
from acbuild.distribution.registry.pushmemory import PushMemory, memory_path
from tests.support.otheruser import as_nobody, shared_directory

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def test_remembers_per_registry_and_round_trips(tmp_path: Path) -> None:
    memory = PushMemory.load(tmp_path / "m.json")
    memory.remember("r.example:5000", "team/a", [A, B])
    memory.save()
    again = PushMemory.load(tmp_path / "m.json")
    assert again.sources("r.example:5000", A, "team/b") == ("team/a",)
    assert again.sources("r.example:5000", A, "team/a") == ()  # its own repository
    assert again.sources("other.example", A, "team/b") == ()
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("content", [
    b"\xff", b"[]", b'{"version": 2, "registries": {}}', b'{"version": 1, "registries": 3}',
    json.dumps({"version": 1, "registries": {"h": {"not-a-digest": "x", A: 7}}}).encode(),
])
def test_a_damaged_file_is_an_empty_memory(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "m.json").write_bytes(content)
    assert PushMemory.load(tmp_path / "m.json").sources("h", A, "r") == ()


def test_keeps_the_most_recent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pushmemory, "LIMIT", 2)
    memory = PushMemory(tmp_path / "m.json")
    memory.remember("h", "r1", [A, B])
    memory.remember("h", "r2", [A, "sha256:" + "c" * 64])
    assert list(memory.registries["h"]) == [A, "sha256:" + "c" * 64]


def test_an_unwritable_place_is_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    memory = PushMemory(tmp_path / "file" / "m.json")
    memory.remember("h", "r", [A])
    memory.save()


def test_lives_in_the_user_cache() -> None:
    assert memory_path({"XDG_CACHE_HOME": "/c", "HOME": "/h"}) == \
        Path("/c/acbuild-py/pushed-blobs.json")
    assert memory_path({"HOME": "/h"}) == Path("/h/.cache/acbuild-py/pushed-blobs.json")


@pytest.fixture
def shared() -> Iterator[Path]:
    yield from shared_directory()


def test_not_written_through_another_users_symlink(shared: Path, tmp_path: Path) -> None:
    """$XDG_CACHE_HOME/acbuild-py planted by `nobody` as a link to a root-owned directory."""
    var = tmp_path / "var"
    var.mkdir(0o755)
    as_nobody(lambda: (shared / "acbuild-py").symlink_to(var))
    memory = PushMemory.load(shared / "acbuild-py" / "pushed-blobs.json")
    memory.remember("r.example:5000", "team/a", [A])
    memory.save()  # a hint not kept, never an error
    assert list(var.iterdir()) == []
