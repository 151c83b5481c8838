"""Test helper: the AppC conformance vectors (tests/image/appc_vectors.json) as images.

Each vector is one manifest (or one tar layout) with the result the appc/spec Go reference
gives it. ``acbuild_valid`` is what acbuild-py must answer: the reference's result unless the
vector names a deviation that docs/conformance.md justifies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.hostile import Tar, compress

VECTORS_FILE = Path(__file__).parent.parent / "image" / "appc_vectors.json"


@dataclass(frozen=True)
class Vector:
    id: str
    source: str  # "schema/types/labels_test.go TestLabels": where the reference says so
    what: str
    valid: bool  # the Go reference's answer
    doc: dict[str, Any]

    @property
    def from_go_test(self) -> bool:
        return "_test.go " in self.source

    @property
    def deviation(self) -> str | None:
        acbuild = self.doc.get("acbuild")
        return None if acbuild is None else str(acbuild["deviation"])

    @property
    def acbuild_valid(self) -> bool:
        acbuild = self.doc.get("acbuild")
        return self.valid if acbuild is None else bool(acbuild["valid"])

    def manifest_bytes(self) -> bytes:
        if "manifest_text" in self.doc:
            return str(self.doc["manifest_text"]).encode()
        return json.dumps(self.doc["manifest"], ensure_ascii=False).encode()

    def image(self, directory: Path) -> Path:
        """The vector as an ACI in ``directory``."""
        tar = Tar()
        for entry in self.doc.get("entries") or [
            {"name": "manifest", "data": self.manifest_bytes().decode()},
            {"name": "rootfs", "type": "dir"},
        ]:
            if entry.get("type") == "dir":
                tar.dir(entry["name"])
            else:
                tar.file(entry["name"], entry["data"].encode())
        path = directory / f"{self.id}.aci"
        path.write_bytes(compress(tar.data(), self.doc.get("compress", "none")))
        return path


def load() -> list[Vector]:
    doc = json.loads(VECTORS_FILE.read_text())
    return [
        Vector(id=v["id"], source=v["from"], what=v["what"], valid=v["valid"], doc=v)
        for v in doc["vectors"]
    ]


ACTOOLS = {"oracle": "/opt/oracles/bin/actool", "debian": "/usr/bin/actool"}


def actool(which: str) -> str | None:
    path = ACTOOLS[which]
    return path if shutil.which(path) else None


def actool_says_valid(tool: str, image: Path) -> bool | None:
    """True/False as actool validates ``image``; None when actool crashes (a Go panic)."""
    run = subprocess.run([tool, "validate", "--type=appimage", str(image)],
                         capture_output=True, text=True, timeout=60)
    if "panic:" in run.stderr:
        return None
    return run.returncode == 0
