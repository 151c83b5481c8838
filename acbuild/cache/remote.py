"""The remote step cache: step-cache entries shared through an OCI registry.

``--cache-from registry://REGISTRY/REPO`` (repeatable): a step the local cache misses is
looked up there (layout: ``remotelayout``), its blobs verified by digest as they stream and
its tree extracted by the image extractor (the same rules as any base image), then stored in
the local cache, which snapshots and seals it as it does a step it ran itself. Anything wrong
with a remote entry (missing blob, wrong digest, not ours) is a miss with a warning; an
unreachable or refusing registry is warned about once and not asked again in this build, and
so is one too slow to be worth waiting for: each cache has a budget over the build
(``ImportBudget``: 30 s, plus 1 s a lookup, plus what it sent at 512 KiB/s), run as a
wall-clock deadline under every socket operation of its requests (``Session.within``), since
a per-read timeout never fires for a cache that trickles its answer a byte at a time; and so
is one that stalls a request past the session's own limits (``TimedOut``).

``--cache-to registry://REGISTRY/REPO``: after the build, every step the local cache holds is
pushed as an entry, unless the registry has its tag already (a key names its content).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from acbuild.cache.cache import CacheStore, CorruptTree, StepRecord
from acbuild.cache.remotelayout import (
    CONFIG_TYPE,
    DOCUMENT_LIMIT,
    EntryConfig,
    EntryManifest,
    RemoteEntryError,
    decode_config,
    decode_manifest,
    encode_config,
    encode_manifest,
    step_tag,
)
from acbuild.distribution.registry.credentials import lookup
from acbuild.distribution.registry.reference import (
    DOCKER_HUB,
    DOCKER_HUB_API,
    RegistryError,
    parse_reference,
)
from acbuild.distribution.registry.transport import (
    Session,
    Stopped,
    TimedOut,
    TransportOptions,
    read_limited,
)
from acbuild.distribution.registry.upload import PushSession, Repository
from acbuild.errors import AcbuildError
from acbuild.fs.staging import StagedRootfs, remove_tree
from acbuild.image.compression import open_decompressed
from acbuild.image.extract import extract_tar
from acbuild.image.manifest import from_json_bytes
from acbuild.image.tarread import Limits
from acbuild.interop.export import MANIFEST_TYPE, Descriptor, write_layer
from acbuild.interop.ocistream import CHUNK, DigestReader, EndedTar, drain
from acbuild.report import Reporter
from acbuild.terminal import escape

SCHEME = "registry://"
# The tree tar keeps the snapshot's mtimes (whole seconds): nothing is clamped below this.
_KEEP_MTIMES = (1 << 33) - 1
_LOOKUP_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRepo:
    registry: str  # HOST[:PORT]
    repository: str

    def url(self) -> str:
        return f"{SCHEME}{self.registry}/{self.repository}"


def parse_cache_ref(text: str, option: str) -> CacheRepo:
    """``registry://REGISTRY/REPO`` as --cache-from/--cache-to take it; RegistryError else."""
    rest = text.removeprefix(SCHEME)
    if "@" in text.split("://", 1)[-1].partition("/")[0]:
        # registry://USER:PASSWORD@HOST/…: not echoed, since what precedes the @ is a secret
        raise RegistryError(f"{option}: a registry:// reference cannot hold credentials "
                            "(USER@HOST)", hint="log in with acbuild-py login HOST")
    if not text.startswith(SCHEME):
        raise RegistryError(f"{option} {text!r}: a remote cache is named registry://REGISTRY/REPO")
    if "@" in rest or ":" in rest.rpartition("/")[2]:
        raise RegistryError(f"{option} {text!r}: name a repository, without a tag or digest "
                         "(each step is its own tag in it)")
    try:
        ref = parse_reference(rest)
    except RegistryError as e:
        raise RegistryError(f"{option} {e.message}".replace("docker://", SCHEME)) from None
    return CacheRepo(registry=ref.registry, repository=ref.repository)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportBudget:
    """How long one --cache-from may keep a build waiting, over the whole build: ``grace``
    seconds, plus ``per_lookup`` seconds a step looked up in it, plus the time what has
    arrived would take at ``min_rate`` bytes a second — the bytes received, never the sizes
    the entry claims (a hostile entry could claim a huge layer and then trickle it). It is a
    wall-clock deadline under every socket operation of the imports (connect, headers,
    body), so a trickle cannot outlast it. Past it the cache is given up on for the build and
    the step is built: a remote cache is a speed-up, and one slower than this is not one.
    Counted over the build, not per import: many lookups each just under a per-import limit
    would add up without bound."""

    grace: float = 30.0
    per_lookup: float = 1.0
    min_rate: float = 512 << 10


class _TooSlow(Exception):
    """A cache ran out of its budget. Not an OSError nor an AcbuildError: what reads the
    layer (decompressor, extractor) must let it through rather than call it a bad entry."""


class _Clock:
    """What one cache's imports have cost the build, against its budget; a deadline of its
    session (``Session.within``) while an import runs, checked too as each piece arrives.
    Stages run in threads: the cost is the wall-clock time during which at least one
    import was talking to the cache (two at once cost the build the time once)."""

    def __init__(self, budget: ImportBudget) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._spent = 0.0  # while imports ran, up to ``_busy_since``
        self._running = 0
        self._busy_since = 0.0
        self.received = 0
        self.lookups = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self.lookups += 1
            self._running += 1
            if self._running == 1:
                self._busy_since = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._spent += time.monotonic() - self._busy_since

    def _allowed(self) -> float:
        return (self.budget.grace + self.lookups * self.budget.per_lookup
                + self.received / self.budget.min_rate)

    def _elapsed(self, now: float) -> float:
        return self._spent + (now - self._busy_since if self._running else 0.0)

    def at(self) -> float:
        now = time.monotonic()
        with self._lock:
            return now + self._allowed() - self._elapsed(now)

    def error(self) -> Exception:
        with self._lock:
            spent = self._elapsed(time.monotonic())
            return _TooSlow(f"it sent {self.received} bytes of cache entries in {spent:.0f} s "
                            f"({self.lookups} looked up), too slowly to be worth waiting for")

    def check(self, count: int = 0) -> None:
        with self._lock:
            self.received += count
            over = self._elapsed(time.monotonic()) > self._allowed()
        if over:
            raise self.error()


class _ResponseReader(io.RawIOBase):
    """A streamed response body as a file (what the digest readers and extractor take);
    ``each`` is told every chunk's size as it arrives (and may stop the transfer)."""

    def __init__(self, response: httpx.Response, each: Callable[[int], None]) -> None:
        # As they arrive (iter_raw(CHUNK) would gather a whole CHUNK before ``each`` hears
        # of any of it: a trickle would go unseen for as long as that takes)
        self._chunks = response.iter_raw()
        self._each = each
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._left:
            try:
                self._left = next(self._chunks, b"")
            except httpx.HTTPError as e:
                raise OSError(f"the transfer broke off: {e}") from None
            self._each(len(self._left))
        n = min(len(b), len(self._left))
        b[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


@dataclass(slots=True)
class _Source:
    repo: CacheRepo
    session: Session
    clock: _Clock
    alive: bool = True


class RemoteCache:
    """The registries of one build's --cache-from and --cache-to, over the local ``store``.
    The sessions are the caller's to close."""

    def __init__(self, store: CacheStore, reporter: Reporter, *,
                 sources: Sequence[tuple[CacheRepo, Session]] = (),
                 destination: tuple[CacheRepo, PushSession] | None = None,
                 limits: Limits | None = None, budget: ImportBudget | None = None) -> None:
        self.store = store
        self.reporter = reporter
        self.budget = budget or ImportBudget()
        self.limits = limits or Limits()  # what an entry's tree may make us do, as a base
        self.sources = [_Source(repo, session, _Clock(self.budget))
                        for repo, session in sources]
        self.destination = destination
        self._giving_up = threading.Lock()  # stages import in threads

    # ---- import ---------------------------------------------------------------------------

    def fetch(self, key: str, what: str) -> str | None:
        """Import step ``key`` (``what``: "step 3") from the first --cache-from that has
        it; the URL of that cache, or None (a miss)."""
        for source in self.sources:
            if not source.alive:
                continue
            try:
                if self._import(source, key):
                    self.reporter.info(f"{what} imported from {source.repo.url()}")
                    return source.repo.url()
            except Stopped:
                raise  # the build stops: no cache to give up on
            except RemoteEntryError as e:
                self._miss(source, what, e.message)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as e:
                # what the entry names cannot even be asked for (httpx refuses the URL)
                self._miss(source, what, f"it names something that cannot be fetched ({e})")
            except _TooSlow as e:
                self._give_up(source, f"{source.repo.url()}: {e}; building {what}, and not "
                                      "using this cache for the rest of the build")
            except (AcbuildError, OSError) as e:
                message = e.message if isinstance(e, AcbuildError) else str(e)
                self._give_up(source, f"{source.repo.url()}: {message}; not using this cache "
                                      "for the rest of the build")
        return None

    def _give_up(self, source: _Source, warning: str) -> None:
        """Stop asking ``source``, with ``warning``, unless another stage's import gave it
        up already (both were asking when it failed): the build hears of it once."""
        with self._giving_up:
            if not source.alive:
                return
            source.alive = False
        self.reporter.warning(warning)

    def _miss(self, source: _Source, what: str, message: str) -> None:
        self.reporter.warning(f"{source.repo.url()}: the cache entry of {what}: "
                              f"{escape(message)}; it is a miss, building the step")

    def _import(self, source: _Source, key: str) -> bool:
        with self._temp() as work:
            rootfs = StagedRootfs(root=work / "rootfs")
            rootfs.root.mkdir(mode=0o755)
            # The budget runs while the cache is talked to (the layer is unpacked as it
            # streams), not while the local cache stores the tree.
            with source.clock.running(), source.session.within(source.clock):
                config = self._download(source, key, rootfs, source.clock)
            if config is None:
                return False
            self.store.put_step(key, config.manifest_json, rootfs=rootfs, tree=None, link=True,
                                imported_from=source.repo.url())
        return True

    def _download(self, source: _Source, key: str, rootfs: StagedRootfs,
                  clock: _Clock) -> EntryConfig | None:
        """The entry of ``key`` unpacked into ``rootfs``: its config, or None (no entry)."""
        repo, session = source.repo, source.session
        scope = f"repository:{repo.repository}:pull"
        tag = step_tag(key)
        with session.get(f"/v2/{repo.repository}/manifests/{tag}", scope=scope,
                         accept=MANIFEST_TYPE) as response:
            if response.status_code == 404:
                return None
            session.check(response, f"cache entry {tag[:17]}…")
            sent_digest = response.headers.get("docker-content-digest")
            try:
                raw = read_limited(response, DOCUMENT_LIMIT, "its manifest", each=clock.check)
            except (TimedOut, Stopped):
                raise
            except RegistryError as e:
                raise RemoteEntryError(f"its manifest is not usable: {e.message}") from None
        if sent_digest is not None and sent_digest != "sha256:" + hashlib.sha256(raw).hexdigest():
            raise RemoteEntryError("its manifest is corrupt: it does not match the digest the "
                                   "registry gives it")
        entry = decode_manifest(raw, key)
        config = decode_config(self._small_blob(source, entry.config, clock), key)
        try:
            from_json_bytes(config.manifest_json)
        except AcbuildError as e:
            raise RemoteEntryError(f"its image manifest is not valid: {e.message}") from None
        self._extract(source, entry, config, rootfs, clock)
        return config

    def _blob_missing(self, response: httpx.Response, digest: str) -> None:
        if response.status_code == 404:
            raise RemoteEntryError(f"it names blob {digest[:19]}, which the registry does not have")

    def _small_blob(self, source: _Source, desc: Descriptor, clock: _Clock) -> bytes:
        repo, session = source.repo, source.session
        if desc.size > DOCUMENT_LIMIT:
            raise RemoteEntryError(f"its config is {desc.size} bytes, more than the limit")
        with session.get(f"/v2/{repo.repository}/blobs/{desc.digest}",
                         scope=f"repository:{repo.repository}:pull") as response:
            self._blob_missing(response, desc.digest)
            session.check(response, f"blob {desc.digest[:19]}")
            try:
                data = read_limited(response, desc.size, "the entry's config", each=clock.check)
            except (TimedOut, Stopped):
                raise
            except RegistryError as e:
                raise RemoteEntryError(f"its config is corrupt: {e.message}") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
            raise RemoteEntryError(f"its config is corrupt: it does not match {desc.digest[:19]}")
        return data

    def _extract(self, source: _Source, entry: EntryManifest, config: EntryConfig,
                 rootfs: StagedRootfs, clock: _Clock) -> None:
        repo, session = source.repo, source.session
        layer = entry.layer
        with session.get(f"/v2/{repo.repository}/blobs/{layer.digest}",
                         scope=f"repository:{repo.repository}:pull") as response:
            self._blob_missing(response, layer.digest)
            session.check(response, f"blob {layer.digest[:19]}")
            blob = DigestReader(_ResponseReader(response, clock.check),  # type: ignore[arg-type]
                                layer.digest)
            try:
                tar = DigestReader(open_decompressed(blob), config.diff_id)  # type: ignore[arg-type]
                extract_tar(io.BufferedReader(EndedTar(tar), CHUNK), rootfs, prefix="",
                            limits=self.limits)
                drain(tar)
                drain(blob)
            except (TimedOut, Stopped):  # a registry that stalled: no bad entry
                raise
            except (AcbuildError, OSError) as e:
                with contextlib.suppress(AcbuildError, OSError):
                    drain(blob)  # a wrong digest is the better explanation
                if blob.count == layer.size and not blob.matches():
                    raise RemoteEntryError(f"its layer is corrupt: it is not {layer.digest[:19]}")\
                        from None
                message = e.message if isinstance(e, AcbuildError) else str(e)
                raise RemoteEntryError(f"its layer cannot be read: {message}") from None
        if not blob.matches() or blob.count != layer.size:
            raise RemoteEntryError(f"its layer is corrupt: it is not {layer.digest[:19]} "
                                   f"({blob.count} bytes, {layer.size} expected)")
        if not tar.matches():
            raise RemoteEntryError("its layer is corrupt: the tree does not match its diff_id")

    @contextlib.contextmanager
    def _temp(self) -> Iterator[Path]:
        """A directory in the cache's tmp/ (same filesystem: trees are linked, not copied;
        under its owner tag, so what a killed build leaves is swept at the next session)."""
        path = self.store.temp_dir("remote-")
        try:
            yield path
        finally:
            remove_tree(path, ignore_errors=True)

    # ---- export ---------------------------------------------------------------------------

    def export(self, keys: Iterable[str]) -> tuple[int, int]:
        """Push the entries of ``keys`` the local cache holds; (pushed, already there)."""
        if self.destination is None:
            return 0, 0
        repo, session = self.destination
        target = Repository(session, repo.repository)
        mount_from = [s.repo.repository for s in self.sources
                      if s.repo.registry == repo.registry and s.repo != repo]
        pushed = present = 0
        packed: dict[str, tuple[Descriptor, str, Path]] = {}
        with self._temp() as work:
            (work / "blobs").mkdir()
            for key in dict.fromkeys(keys):
                record = self.store.step(key)
                if record is None:
                    continue
                if target.has_manifest(step_tag(key), MANIFEST_TYPE):
                    present += 1
                    continue
                tree = packed.get(record.tree) or self._pack(record, work, len(packed))
                if tree is None:
                    continue
                packed[record.tree] = tree
                layer, diff_id, path = tree
                target.push_blob(path, layer.digest, layer.size, mount_from=mount_from)
                config = encode_config(EntryConfig(key=key, manifest_json=record.manifest_json,
                                                   diff_id=diff_id))
                config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
                target.push_bytes(config, config_digest)
                target.put_manifest(step_tag(key), encode_manifest(key, EntryManifest(
                    config=Descriptor(media_type=CONFIG_TYPE, digest=config_digest,
                                      size=len(config)),
                    layer=layer)), MANIFEST_TYPE)
                pushed += 1
        return pushed, present

    def _pack(self, record: StepRecord, work: Path,
              number: int) -> tuple[Descriptor, str, Path] | None:
        """The tree of ``record`` as a tar+gzip blob in ``work/blobs``; None (warned) when the
        local entry turns out damaged, or changes while it is packed.

        Restored lazily: the entry's files are verified against its digest and stay where
        they are, and the layer is written from the checked walk (write_rootfs), which takes
        each file's bytes from the descriptor it checked against what the restore verified
        at that path, hashing them as they go into the layer. A file rewritten between the
        restore and the pack is a mismatch, never a pushed layer."""
        root = work / f"tree-{number}"
        try:
            rootfs = self.store.restore(record, root, link=False, lazy=True)
        except CorruptTree as e:
            self.reporter.warning(f"{e.message}; not exporting it")
            shutil.rmtree(root, ignore_errors=True)
            return None
        try:
            layer, diff_id = write_layer(rootfs, work / "blobs", _KEEP_MTIMES, None)
        except AcbuildError as e:  # the entry changed since its restore (it is discarded)
            self.reporter.warning(f"{e.message}; not exporting it")
            with contextlib.suppress(OSError):
                os.unlink(work / "blobs" / ".layer.tmp")
            return None
        finally:
            remove_tree(root, ignore_errors=True)
        return layer, diff_id, work / "blobs" / layer.digest.split(":", 1)[1]


@contextlib.contextmanager
def open_remote(store: CacheStore, reporter: Reporter, *, sources: Sequence[CacheRepo],
                destination: CacheRepo | None, transport: TransportOptions,
                environ: Mapping[str, str], limits: Limits | None = None,
                stop: threading.Event | None = None) -> Iterator[RemoteCache | None]:
    """The RemoteCache of --cache-from/--cache-to with a session to each registry (the
    user's stored credentials, if any), closed when the block ends; None without either.
    ``stop`` (the build's), once set, ends their requests in every thread."""
    if not sources and destination is None:
        yield None
        return
    with contextlib.ExitStack() as stack:
        def session(repo: CacheRepo, options: TransportOptions) -> PushSession:
            api = DOCKER_HUB_API if repo.registry == DOCKER_HUB else repo.registry
            made = PushSession(repo.registry, options, lookup(repo.registry, environ),
                               api_host=api, stop=stop)
            stack.callback(made.close)
            return made

        # A lookup that fails is only a miss: a registry that stalls is given up on sooner
        # than one a push depends on (at most about 2 x 15 s, not 5 x 60 s).
        lookups = dataclasses.replace(transport, timeout=min(transport.timeout, _LOOKUP_TIMEOUT),
                                      retries=min(transport.retries, 1))
        push = None if destination is None else (destination, session(destination, transport))
        yield RemoteCache(store, reporter,
                          sources=[(r, session(r, lookups)) for r in sources],
                          destination=push, limits=limits)
