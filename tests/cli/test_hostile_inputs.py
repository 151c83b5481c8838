"""The property pass: every verb, fed hostile inputs (mutated ACIs, OCI layouts, manifests,
Acfiles, keys, signatures and option values), fails with a message — never exit 70, never a
traceback.

Seeded mutation, so a failure can be replayed: ACBUILD_FUZZ_SEED picks the seed,
ACBUILD_FUZZ_CASES the number of CLI calls (each its own process, run four at a time) and
ACBUILD_FUZZ_SECONDS the time after which no new call starts (every verb runs at least once);
ACBUILD_FUZZ_REPORT names a file that lists every call's exit status and last line.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.support.cli import Result, acbuild
from tests.support.gpghelp import Keys, gpg, kill_agent
from tests.support.hostile import Tar
from tests.support.ocifixtures import file as layer_file
from tests.support.ocifixtures import raw_layout, tar_bytes

pytest_plugins = ("tests.support.fetchhelp",)

SEED = int(os.environ.get("ACBUILD_FUZZ_SEED", "13"))
CASES = int(os.environ.get("ACBUILD_FUZZ_CASES", "96"))
SECONDS = float(os.environ.get("ACBUILD_FUZZ_SECONDS", "45"))

MANIFEST = {
    "acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/fuzz",
    "labels": [{"name": "version", "value": "1"}, {"name": "os", "value": "linux"},
               {"name": "arch", "value": "amd64"}],
    "app": {"exec": ["/bin/app", "-x"], "user": "0", "group": "0", "workingDirectory": "/",
            "environment": [{"name": "PATH", "value": "/bin"}],
            "mountPoints": [{"name": "data", "path": "/data", "readOnly": True}],
            "ports": [{"name": "http", "protocol": "tcp", "port": 80}],
            "isolators": [{"name": "resource/memory", "value": {"limit": "1G"}}],
            "eventHandlers": [{"name": "pre-start", "exec": ["/bin/true"]}]},
    "dependencies": [{"imageName": "example.com/base", "labels": [{"name": "version",
                                                                    "value": "1"}]}],
    "annotations": [{"name": "authors", "value": "me"}],
    "pathWhitelist": ["/bin/app"],
}

# Values that break assumptions: wrong JSON types, huge and odd numbers, hostile text.
VALUES: list[object] = [
    None, True, 0, -1, 2**64, 10**400, 1e308, -0.0, "", [], {}, [[[]]], {"a": {"b": []}},
    "\x00", "\x1b[2J\x1b]8;;http://x/\x07", "\ud800", "../../etc/passwd", "/" * 5000,
    "a" * 100_000, "\u202e", "-rf", "[bold]x[/bold]", "example.com/../x", "${HOME}",
]
TEXT = ["\x00", "\x1b[31m", "\x9b", "\x7f", "\r", "\b", "\ud800", "{{", "{%", "%}", "}}", "'",
        '"', "\\", "[", "]", "{", "}", "..", "/", "=", "--", "-", "\t", "\n", "\u202e",
        "9" * 40, "1e400", "nan", "-1", "*", "[bold]", ":", ",", "@", "#"]
ACFILE_LINES = [
    "BEGIN scratch", "NAME example.com/fuzz", "LABEL version=1.0", "ENV A=b",
    "COPY ctx.txt /ctx.txt", "COPY --chown=0:0 --chmod=0644 ctx.txt /x", "WORKDIR /srv",
    "USER 0", "GROUP 0", "EXEC /bin/app --flag", 'EXEC ["/bin/app", "x"]', "PORT http tcp 80",
    "MOUNT data /data", "ANNOTATION authors=me", "ISOLATOR resource/memory {\"limit\": \"1G\"}",
    "PATH-WHITELIST /bin/app", "SUPPLEMENTARY-GIDS 1 2", "DEPENDENCY example.com/dep",
    "EVENT-HANDLER pre-start /bin/true", "{% for i in range(3) %}LABEL l{{ i }}=x{% endfor %}",
    "LABEL a={{ v }}", "BEGIN ./base.aci AS b", "COPY --from=b /x /y", "BEGIN oci:layout",
    "{{ '{:>1000000000}'.format(1) }}", "{{ '%0*d' % (10**9, 1) }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RUN --timeout=1e400 true",
    "SIGN --batch", "BEGIN /etc", "COPY ../../../etc/passwd /p", "ISOLATOR a " + "[" * 5000,
]


def mutate_json(rng: random.Random, doc: object) -> object:
    """``doc`` with one to three values, anywhere in it, replaced by hostile ones."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths: list[tuple[object, object]] = []
        stack: list[object] = [doc]
        while stack:
            node = stack.pop()
            keys = list(node) if isinstance(node, dict) else range(len(node)) \
                if isinstance(node, list) else []
            for k in keys:
                paths.append((node, k))
                stack.append(node[k])  # type: ignore[index]
        if not paths:
            return rng.choice(VALUES)
        node, key = rng.choice(paths)
        node[key] = rng.choice(VALUES)  # type: ignore[index]
    return doc


def mutate_text(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(chars) + 1)
        if chars and rng.random() < 0.3:
            del chars[min(at, len(chars) - 1)]
        else:
            chars.insert(at, rng.choice(TEXT))
    return "".join(chars)


def flip_bytes(rng: random.Random, data: bytes, *, within: int | None = None) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(min(len(out), within or len(out)))] = rng.randrange(256)
    return bytes(out)


def manifest_bytes(rng: random.Random) -> bytes:
    text = json.dumps(mutate_json(rng, MANIFEST), ensure_ascii=rng.random() < 0.5,
                      allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def aci_tar(rng: random.Random, manifest: bytes | None = None) -> bytes:
    t = Tar(fmt=rng.choice([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
    t.file("manifest", manifest if manifest is not None else json.dumps(MANIFEST).encode())
    t.dir("rootfs").dir("rootfs/bin").file("rootfs/bin/app", b"#!/bin/sh\n", mode=0o755)
    choice = rng.randrange(8)
    if choice == 0:
        key = rng.choice(["uid", "gid", "mtime", "size", "path", "linkpath", "uname"])
        value = rng.choice(["-1", "nan", "inf", str(10**30), "1e300", "", "\x1b[2J", "../x"])
        t.file("rootfs/pax", b"x", pax={key: value})
    elif choice == 1:
        t.symlink("rootfs/link", rng.choice(["/etc/passwd", "../../..", "x" * 5000, "\x1b]0;\x07"]))
    elif choice == 2:
        t.hardlink("rootfs/hard", rng.choice(["rootfs/missing", "../etc/passwd", "rootfs"]))
    elif choice == 3:
        t.device("rootfs/dev", rng.choice(["chr", "blk", "fifo"]), rng.randrange(300),
                 rng.randrange(300))
    elif choice == 4:
        t.file(rng.choice(["rootfs/../../x", "/abs", "rootfs/\x1b[2Jname", "manifest",
                           "rootfs/" + "d/" * 600 + "f"]), b"dup")
    elif choice == 5:
        t.dir("rootfs/bin")  # a directory twice
        t.file("rootfs/bin", b"now a file")
    return t.data(end=rng.random() < 0.9)


def hostile_aci(rng: random.Random, path: Path) -> Path:
    kind = rng.randrange(5)
    manifest = manifest_bytes(rng) if kind in (0, 1) else None
    tar = aci_tar(rng, manifest)
    if kind == 2:
        tar = flip_bytes(rng, tar, within=4096)
    data = gzip.compress(tar, mtime=0) if rng.random() < 0.7 else tar
    if kind == 3:
        data = data[: rng.randrange(1, len(data))]
    elif kind == 4:
        data = flip_bytes(rng, data)
    path.write_bytes(data)
    return path


def hostile_layout(rng: random.Random, path: Path) -> Path:
    config: dict[str, object] = {
        "created": "2020-01-01T00:00:00Z", "author": "x",
        "config": {"User": "0", "Env": ["A=b"], "Cmd": ["/bin/sh"], "Entrypoint": None,
                   "WorkingDir": "/", "Labels": {"a": "b"}, "ExposedPorts": {"80/tcp": {}},
                   "Volumes": {"/data": {}}},
    }
    mutated = mutate_json(rng, config)
    entries = [layer_file("etc/hello", "hi\n")]
    tar = tar_bytes(entries)
    media = "application/vnd.oci.image.layer.v1.tar"
    raw_layout(path, [(tar, tar, media)],
               config=mutated if isinstance(mutated, dict) else {"config": mutated})
    if rng.random() < 0.3:
        victim = rng.choice([path / "index.json", path / "oci-layout"])
        victim.write_bytes(json.dumps(mutate_json(rng, json.loads(victim.read_text())),
                                      allow_nan=True).encode("utf-8", "surrogatepass"))
    return path


@dataclass
class World:
    """The files the calls read: made once, then a fresh hostile copy per call."""

    root: Path
    keys: Keys
    rng: random.Random
    counter: int = 0

    def fresh(self) -> Path:
        self.counter += 1
        d = self.root / f"c{self.counter}"
        d.mkdir()
        (d / "ctx.txt").write_text("context file\n")
        return d

    def aci(self, d: Path, name: str = "x.aci") -> Path:
        return hostile_aci(self.rng, d / name)

    def acfile(self, d: Path) -> Path:
        hostile_aci(self.rng, d / "base.aci")
        if self.rng.random() < 0.3:
            hostile_layout(self.rng, d / "layout")
        lines = self.rng.sample(ACFILE_LINES[:4], 2) + self.rng.sample(ACFILE_LINES, 4)
        text = "\n".join(lines) + "\n"
        if self.rng.random() < 0.7:
            text = mutate_text(self.rng, text)
        path = d / "Acfile"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        return path

    def option_path(self, d: Path) -> str:
        """A directory option's value: usually hostile."""
        (d / "regular").write_text("x")
        return self.rng.choice([str(d / "regular" / "sub"), str(d / "regular"),
                                str(d / "ok"), str(d / "\x1b[2J"), "/proc/self/fd/0/x",
                                str(d / ("n" * 300))])

    def var(self) -> str:
        if self.rng.random() < 0.6:
            return "v=1"
        return self.rng.choice(["v=\x1b[31m", "v=" + "x" * 10000, "=1", "1v=2", "v",
                                "v={{ 7 }}", "v=\u202e"])


Call = tuple[tuple[str, ...], dict[str, str]]


def _calls(w: World) -> Iterator[tuple[str, Callable[[], Call]]]:
    r = w.rng

    def build() -> Call:
        d = w.fresh()
        args = ["build", str(w.acfile(d)), "-o", str(d / "out.aci"), "--var", w.var()]
        if r.random() < 0.5:
            args += ["--cache-dir", w.option_path(d)]
        if r.random() < 0.3:
            args += ["--log-file", w.option_path(d) + "/b.log"]
        if r.random() < 0.3:
            (d / "vars.toml").write_text(r.choice(['v = "\\u0000"', "v = [1]", "[t]\na=1",
                                                  'v = "\\u001b"', "v = 1e400", "= 1"]))
            args += ["--var-file", str(d / "vars.toml")]
        return tuple(args), {}

    def plan() -> Call:
        d = w.fresh()
        return ("plan", str(w.acfile(d)), "--var", w.var()), {}

    def lint() -> Call:
        d = w.fresh()
        return ("lint", str(w.acfile(d)), "--var", w.var()), {}

    def fmt() -> Call:
        d = w.fresh()
        return ("fmt", str(w.acfile(d))), {}

    def one_image(verb: str) -> Callable[[], Call]:
        return lambda: ((verb, str(w.aci(w.fresh()))), {})

    def diff() -> Call:
        d = w.fresh()
        return ("diff", str(w.aci(d, "a.aci")), str(w.aci(d, "b.aci"))), {}

    def convert() -> Call:
        d = w.fresh()
        return ("convert", str(hostile_layout(r, d / "layout")), "-o", str(d / "o.aci")), {}

    def export() -> Call:
        d = w.fresh()
        return ("export", str(w.aci(d)), "-o", r.choice([str(d / "oci"), w.option_path(d)])), {}

    def verify() -> Call:
        d = w.fresh()
        return ("verify", str(signed(d)), "--trust-store", w.option_path(d)), {}

    def sign() -> Call:
        d = w.fresh()
        home = d / "gpg"
        home.mkdir(mode=0o700)
        return ("sign", str(w.aci(d)), "--key", r.choice(["alice", "\x1b[2J", "x" * 5000,
                                                          "a@b", "0x" + "F" * 40]),
                "--gpg-home", r.choice([str(home), w.option_path(d)])), {"GNUPGHOME": str(home)}

    def fetch() -> Call:
        d = w.fresh()
        return ("fetch", str(w.aci(d)), "--insecure-skip-verify", "--store",
                w.option_path(d)), {}

    def signed(d: Path) -> Path:
        image = w.aci(d)
        signature = gpg(w.keys.home, "--armor", "--detach-sign", "-u", w.keys.fpr["alice"],
                        "-o", "-", str(image))
        (d / "x.aci.asc").write_bytes(flip_bytes(r, signature) if r.random() < 0.5
                                      else signature)
        return image

    def publish() -> Call:
        d = w.fresh()
        return ("publish", str(signed(d)), "--repo", w.option_path(d), "--url-base",
                r.choice(["http://127.0.0.1:9/", "\x1b", "file:///etc", "http://[::1"])), {}

    def run() -> Call:
        d = w.fresh()
        if r.random() < 0.3:
            return ("run", "--help"), {}
        return ("run", "--no-stdin", "--insecure-skip-verify", str(w.aci(d))), \
            {"XDG_CACHE_HOME": w.option_path(d)}

    def cache() -> Call:
        d = w.fresh()
        sub = r.choice([["list"], ["prune", "--max-size", r.choice(["0", "1e400T", "-1", "9" * 30,
                                                                     "x"])]])
        return ("cache", *sub, "--cache-dir", w.option_path(d)), {}

    def gc() -> Call:
        d = w.fresh()
        return ("gc", r.choice(["--keep", "--older-than"]), r.choice(["0", "9" * 40, "1e308",
                                                                      "nan", "inf", "-1"]),
                "--store", w.option_path(d)), {}

    def trust() -> Call:
        d = w.fresh()
        key = d / "key.asc"
        key.write_bytes(flip_bytes(r, w.keys.pub["alice"].read_bytes()))
        return r.choice([("trust", "--list", "--trust-store", w.option_path(d)),
                         ("trust", "--root", "--yes", "--trust-store", w.option_path(d),
                          str(key)),
                         ("trust", "--prefix", r.choice(["../x", "\x1b", "a" * 300]), "--yes",
                          "--trust-store", str(d / "t"), str(key)),
                         ("trust", "--remove", "\x1b[2J", "--trust-store", str(d / "t"))]), {}

    makers: list[tuple[str, Callable[[], Call]]] = [
        ("build", build), ("plan", plan), ("lint", lint), ("fmt", fmt),
        ("validate", one_image("validate")), ("manifest", one_image("manifest")),
        ("inspect", one_image("inspect")), ("diff", diff), ("convert", convert),
        ("export", export), ("verify", verify), ("sign", sign), ("fetch", fetch),
        ("publish", publish), ("run", run), ("cache", cache), ("gc", gc), ("trust", trust),
    ]
    while True:  # every verb once, then at random
        yield from makers
        for _ in range(len(makers)):
            yield r.choice(makers)


REPORT = os.environ.get("ACBUILD_FUZZ_REPORT")  # a file to list every call and its outcome


def _verdict(args: tuple[str, ...], result: Result) -> str | None:
    text = result.stdout + result.stderr
    if REPORT:
        with open(REPORT, "a", encoding="utf-8", errors="backslashreplace") as f:
            last = result.stderr.strip().splitlines()[-1:] or [""]
            f.write(f"{result.code} {args[0]} :: {last[0][:200]!r}\n")
    if result.code == 70 or "Traceback" in text or "acbuild-py: internal error" in text:
        return f"{args!r} -> exit {result.code}\n{result.stderr[-1500:]}"
    return None


def test_no_verb_fails_internally_on_hostile_input(tmp_path: Path, gpgkeys: Keys) -> None:
    world = World(root=tmp_path, keys=gpgkeys, rng=random.Random(SEED))
    calls = _calls(world)
    planned = [next(calls) for _ in range(CASES)]
    must = 18  # the first round: every verb at least once, whatever the clock says
    prepared = [(verb, maker()) for verb, maker in planned]
    deadline = time.monotonic() + SECONDS

    def one(item: tuple[int, tuple[str, Call]]) -> tuple[str, str | None] | None:
        n, (verb, (args, env)) = item
        if n >= must and time.monotonic() > deadline:
            return None
        return verb, _verdict(args, acbuild(*args, env=env, timeout=90))

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = [o for o in pool.map(one, enumerate(prepared)) if o is not None]
    finally:
        for d in tmp_path.glob("c*/gpg"):
            kill_agent(d)
        kill_agent(gpgkeys.home)
    failures = [f for _, f in outcomes if f]
    assert {verb for verb, _ in outcomes} >= {verb for verb, _ in planned[:must]}
    assert not failures, f"seed {SEED}: {len(failures)} of {len(outcomes)} calls failed " \
                         "internally:\n\n" + "\n\n".join(failures)


def test_the_mutators_make_what_they_claim() -> None:
    rng = random.Random(1)
    changed = [mutate_json(rng, MANIFEST) != MANIFEST for _ in range(20)]
    assert all(changed)
    assert mutate_text(rng, "BEGIN scratch\n") != "BEGIN scratch\n"
    tar = aci_tar(rng)
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as t:
        assert "manifest" in t.getnames()
