"""Fetch: from a name, URL or path to a verified image in the local image store.

Downloads stream to a temporary file in the store, are verified against the trust store and
checked against the requested name and labels, and only then are moved into the store.
"""

from __future__ import annotations

import http.client
import shutil
import tempfile
import urllib.error
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from acbuild.distribution.discovery import HttpOptions, ImageRef, discover, open_url, parse_ref
from acbuild.distribution.imagestore import Entry, ImageStore
from acbuild.errors import AcbuildError, FetchError, TrustError
from acbuild.fs.atomic import atomic_write
from acbuild.fs.regular import open_regular
from acbuild.image import aci
from acbuild.numbers import ascii_int
from acbuild.report import Reporter
from acbuild.trust.names import check_file_part, check_image_name
from acbuild.trust.sign import signature_path
from acbuild.trust.truststore import TrustStore
from acbuild.trust.verify import VerifyResult, verify_image

CHUNK = 1 << 20
MAX_KEY_FILE = 1 << 20
MAX_SIGNATURE = 1 << 20  # an armored detached signature is a few hundred bytes
PullPolicy = Literal["new", "update", "never"]
PULL_POLICIES: tuple[PullPolicy, ...] = ("new", "update", "never")


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchOptions:
    insecure: bool = False
    port: int | None = None
    trust_store: Path | None = None
    skip_verify: bool = False
    ca_file: Path | None = None
    store_dir: Path | None = None
    # As rkt: "new" uses a stored copy that still verifies, "update" always asks the
    # server, "never" only looks in the store.
    pull_policy: PullPolicy = "new"

    def http(self) -> HttpOptions:
        return HttpOptions(insecure=self.insecure, port=self.port, ca_file=self.ca_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchResult:
    entry: Entry
    path: Path  # the image in the store
    signature: Path | None
    verified: VerifyResult | None
    from_store: bool  # no download was needed


def fetch(ref_text: str, *, options: FetchOptions, reporter: Reporter,
          output_dir: Path | None = None) -> FetchResult:
    """``acbuild-py fetch``: a name (discovered), an http(s) URL, or a local path."""
    if ref_text.startswith(("https://", "http://")):
        if options.pull_policy == "never":
            raise FetchError(f"cannot fetch {ref_text} with --pull-policy=never",
                             hint="fetch it by name, or allow downloads: --pull-policy=update")
        result = _fetch_url(ref_text, None, options=options, reporter=reporter)
    elif ref_text.startswith((".", "/")) or Path(ref_text).suffix == ".aci":
        result = _fetch_path(Path(ref_text), options=options, reporter=reporter)
    else:
        result = fetch_ref(parse_ref(ref_text), options=options, reporter=reporter)
    if output_dir is not None:
        _export(result, output_dir)
    return result


def resolve_image(name: str, labels: Iterable[tuple[str, str]], *, options: FetchOptions,
                  reporter: Reporter) -> Path:
    """A verified local copy of ``name`` with ``labels``: from the store, else fetched."""
    ref = ImageRef(name=name, labels=tuple(labels))
    return fetch_ref(ref, options=options, reporter=reporter).path


def fetch_ref(ref: ImageRef, *, options: FetchOptions, reporter: Reporter) -> FetchResult:
    """``ref`` by name, as the pull policy says: from the store and/or discovered."""
    check_image_name(ref.name, "fetch")
    if options.pull_policy != "update":
        stored = _from_store(ref, options=options, reporter=reporter)
        if stored is not None:
            return stored
    if options.pull_policy == "never":
        where = ImageStore.locate(options.store_dir).root
        raise FetchError(f"{ref} is not in the image store {where} (--pull-policy=never)",
                         hint="fetch it first, or allow downloads: --pull-policy=new")
    found = discover(ref, options.http())
    failures = []
    for endpoint in found.endpoints:
        try:
            return _fetch_url(endpoint.aci, ref, options=options, reporter=reporter,
                              asc_url=endpoint.asc)
        except FetchError as e:
            failures.append(e.message)
    raise FetchError(f"cannot fetch {ref}: " + "; ".join(failures))


def _from_store(ref: ImageRef, *, options: FetchOptions, reporter: Reporter) -> FetchResult | None:
    """The stored copy of ``ref`` when it still verifies. A copy whose signature no longer
    does (its key was removed from the trust store) never shadows the server's: with
    "new" it is fetched again; with "never" that is an error."""
    store = ImageStore.locate(options.store_dir)
    hit = store.find(ref.name, ref.labels)
    if hit is None:
        return None
    if not hit.signed and not options.skip_verify:
        if options.pull_policy == "never":
            raise TrustError(f"the stored copy of {ref} ({hit.id[:19]}) is not signed "
                             "(--pull-policy=never)",
                             hint="fetch a signed copy, or pass --insecure-skip-verify")
        reporter.info(f"the stored copy of {ref} is not signed: fetching it again")
        return None
    try:
        verified = _check_stored(store, hit, options=options, reporter=reporter)
    except TrustError as e:
        if options.pull_policy == "never":
            raise TrustError(f"the stored copy of {ref} no longer verifies: {e.message}",
                             hint="fetch it again: --pull-policy=update") from None
        reporter.warning(f"the stored copy of {ref} ({hit.id[:19]}) no longer verifies "
                         f"({e.message}); fetching it again")
        return None
    reporter.info(f"using {ref} from the image store: {hit.id[:19]}")
    return FetchResult(entry=hit, path=store.aci_path(hit.id), from_store=True,
                       signature=verified.signature if verified else None, verified=verified)


def verify_local(path: Path, store: TrustStore, reporter: Reporter) -> VerifyResult | None:
    """A local image needs no signature; but when PATH.asc exists it must verify."""
    if not signature_path(path).exists():
        return None
    result = verify_image(path, store)
    reporter.info(f"{path}: signed by {result.signer} ({result.fingerprint}), "
                  f"trusted as {result.trusted_as}")
    return result


def _check_stored(store: ImageStore, entry: Entry, *, options: FetchOptions,
                  reporter: Reporter) -> VerifyResult | None:
    # Trust may have been withdrawn since the download: check again, it costs one gpg call.
    if not entry.signed:
        _warn_unverified(reporter, entry.name)
        return None
    return _verify(store.aci_path(entry.id), store.asc_path(entry.id), entry.name,
                   options=options, reporter=reporter)


def _fetch_url(url: str, ref: ImageRef | None, *, options: FetchOptions, reporter: Reporter,
               asc_url: str | None = None) -> FetchResult:
    store = ImageStore.locate(options.store_dir)
    with store.temp() as tmp:
        aci_tmp, asc_tmp = Path(tmp) / "image.aci", Path(tmp) / "image.aci.asc"
        download(url, aci_tmp, options=options, reporter=reporter)
        asc_url = asc_url or url + ".asc"
        has_asc = _download_signature(asc_url, asc_tmp, options, reporter)
        manifest, image_id = aci.scan(aci_tmp)
        check_image_name(manifest.name, url)
        labels = tuple((lbl.name, lbl.value) for lbl in manifest.labels)
        if ref is not None:
            _check_match(ref, manifest.name, labels, url)
        if has_asc:
            verified = _verify(aci_tmp, asc_tmp, manifest.name, options=options,
                               reporter=reporter, shown_as=url)
        else:
            _missing_signature(url, asc_url, options, reporter, manifest.name)
            verified = None
        entry = store.add(aci_tmp, asc_tmp if has_asc else None, image_id=image_id,
                          name=manifest.name, labels=labels)
    path = store.aci_path(entry.id)
    if verified is not None:
        verified = replace(verified, image=path, signature=store.asc_path(entry.id))
    reporter.info(f"stored {manifest.name} as {entry.id}")
    return FetchResult(entry=entry, path=path, from_store=False, verified=verified,
                       signature=verified.signature if verified else None)


def _fetch_path(path: Path, *, options: FetchOptions, reporter: Reporter) -> FetchResult:
    """A local file into the store. As rkt: it must be signed by a key trusted for its name
    (PATH.asc), unless --insecure-skip-verify. The copy is what is checked and stored, so
    the file changing meanwhile cannot slip unchecked bytes in."""
    if not path.exists():  # anything else that is not a file: open_regular says what it is
        raise FetchError(f"{path}: no such image file")
    store = ImageStore.locate(options.store_dir)
    with store.temp() as tmp:
        copy, asc = Path(tmp) / "image.aci", Path(tmp) / "image.aci.asc"
        try:
            src = open_regular(path)
        except OSError as e:
            raise FetchError(f"cannot read {path}: {e.strerror or e}") from None
        with src, open(copy, "xb") as out:
            shutil.copyfileobj(src, out, CHUNK)
        has_asc = _copy_signature(signature_path(path), asc)
        manifest, image_id = aci.scan(copy)
        check_image_name(manifest.name, str(path))
        verified = None
        if has_asc:
            verified = _verify(copy, asc, manifest.name, options=options, reporter=reporter,
                               shown_as=str(path))
        elif not options.skip_verify:
            raise TrustError(f"{path} is not signed: {signature_path(path)} does not exist",
                             hint="sign it (acbuild-py sign), or pass --insecure-skip-verify "
                                  "to store it unverified")
        else:
            _warn_unverified(reporter, manifest.name)
        entry = store.add(copy, asc if verified else None, image_id=image_id,
                          name=manifest.name,
                          labels=tuple((lbl.name, lbl.value) for lbl in manifest.labels))
    path_in_store = store.aci_path(entry.id)
    if verified is not None:
        verified = replace(verified, image=path_in_store, signature=store.asc_path(entry.id))
    return FetchResult(entry=entry, path=path_in_store, from_store=False, verified=verified,
                       signature=verified.signature if verified else None)


def _copy_signature(src: Path, dest: Path) -> bool:
    try:
        with open_regular(src) as f:
            data = f.read(MAX_SIGNATURE + 1)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise TrustError(f"cannot read {src}: {e.strerror}") from None
    if len(data) > MAX_SIGNATURE:
        raise TrustError(f"{src} is larger than {MAX_SIGNATURE} bytes: not a signature")
    dest.write_bytes(data)
    return True


def _check_match(ref: ImageRef, name: str, labels: tuple[tuple[str, str], ...], url: str) -> None:
    if name != ref.name:
        raise FetchError(f"{url} is {name!r}, not the requested {ref.name!r}",
                         hint="the server offers a different image under this name")
    have = dict(labels)
    for key, value in ref.labels:
        if have.get(key) != value:
            raise FetchError(f"{url} has label {key}={have.get(key, '(none)')}, "
                             f"not the requested {key}={value}")


def _verify(image: Path, asc: Path, name: str, *, options: FetchOptions, reporter: Reporter,
            shown_as: str | None = None) -> VerifyResult | None:
    store = TrustStore.locate(options.trust_store)
    try:
        result = verify_image(image, store, signature=asc, name=name, shown_as=shown_as)
    except TrustError as e:
        if not options.skip_verify:
            raise
        reporter.warning(f"SIGNATURE CHECK FAILED for {name}, using it anyway "
                         f"(--insecure-skip-verify): {e.message}")
        return None
    reporter.info(f"{name}: signed by {result.signer} ({result.fingerprint}), "
                  f"trusted as {result.trusted_as}")
    return result


def _missing_signature(url: str, asc_url: str, options: FetchOptions, reporter: Reporter,
                       name: str) -> None:
    if not options.skip_verify:
        raise TrustError(f"{url} is not signed: {asc_url} was not found",
                         hint="only --insecure-skip-verify accepts unsigned images")
    _warn_unverified(reporter, name)


def _warn_unverified(reporter: Reporter, name: str) -> None:
    reporter.warning(f"{name} is NOT VERIFIED: no signature was checked (--insecure-skip-verify)")


def _download_signature(url: str, dest: Path, options: FetchOptions, reporter: Reporter) -> bool:
    try:
        download(url, dest, options=options, reporter=reporter, what="signature",
                 limit=MAX_SIGNATURE)
    except _NotFound:
        return False
    return True


class _NotFound(FetchError):
    pass


def download(url: str, dest: Path, *, options: FetchOptions, reporter: Reporter,
             what: str = "download", limit: int | None = None) -> int:
    """Stream ``url`` into ``dest``; a short or failed download leaves ``dest`` removed."""
    try:
        with open_url(url, options.http()) as response, dest.open("wb") as out:
            total = _length(response)
            done = 0
            while chunk := response.read(CHUNK):
                done += len(chunk)
                if limit is not None and done > limit:
                    raise FetchError(f"{url} is larger than {limit} bytes")
                out.write(chunk)
                reporter.progress(what, done, total)
            if total is not None and done != total:
                raise FetchError(f"download of {url} was cut off at {done} of {total} bytes")
            return done
    except urllib.error.HTTPError as e:
        e.close()
        dest.unlink(missing_ok=True)
        cls = _NotFound if e.code in (404, 410) else FetchError
        raise cls(f"cannot fetch {url}: HTTP {e.code}") from None
    except http.client.IncompleteRead as e:
        dest.unlink(missing_ok=True)
        raise FetchError(f"download of {url} was cut off after {len(e.partial)} more bytes") \
            from None
    except (OSError, http.client.HTTPException) as e:
        dest.unlink(missing_ok=True)
        raise FetchError(f"download of {url} failed: {e}") from None
    except AcbuildError:
        dest.unlink(missing_ok=True)
        raise


def _length(response: object) -> int | None:
    value = getattr(response, "headers", {}).get("Content-Length")
    return None if value is None else ascii_int(value)


def fetch_keys(ref: ImageRef, options: FetchOptions, reporter: Reporter) -> tuple[bytes, ...]:
    """The public keys a name's discovery page offers (``ac-discovery-pubkeys``), for TOFU."""
    found = discover(ref, options.http())
    if not found.keys:
        raise FetchError(f"{found.page} offers no ac-discovery-pubkeys for {ref.name}")
    keys = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, url in enumerate(found.keys):
            dest = Path(tmp) / f"key{i}"
            download(url, dest, options=options, reporter=reporter, what="key",
                     limit=MAX_KEY_FILE)
            keys.append(dest.read_bytes())
    return tuple(keys)


def _export(result: FetchResult, output_dir: Path) -> None:
    entry = result.entry
    version = dict(entry.labels).get("version", entry.id[7:19])
    stem = check_image_name(entry.name, "fetch -o").rsplit("/", 1)[-1]
    base = f"{stem}-{check_file_part(version, 'label version', entry.name)}.aci"
    output_dir.mkdir(parents=True, exist_ok=True)
    sources = [(result.path, output_dir / base)]
    if result.signature is not None:
        sources.append((result.signature, output_dir / f"{base}.asc"))
    for src, dst in sources:
        with src.open("rb") as f, atomic_write(dst, mode=0o644) as out:
            shutil.copyfileobj(f, out, CHUNK)
