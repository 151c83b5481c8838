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

from acbuild.distribution.discovery import HttpOptions, ImageRef, discover, open_url, parse_ref
from acbuild.distribution.imagestore import Entry, ImageStore
from acbuild.errors import AcbuildError, FetchError, TrustError
from acbuild.fs.atomic import atomic_write
from acbuild.image import aci
from acbuild.report import Reporter
from acbuild.trust.sign import signature_path
from acbuild.trust.truststore import TrustStore
from acbuild.trust.verify import VerifyResult, verify_image

CHUNK = 1 << 20
MAX_KEY_FILE = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchOptions:
    insecure: bool = False
    port: int | None = None
    trust_store: Path | None = None
    skip_verify: bool = False
    ca_file: Path | None = None
    store_dir: Path | None = None

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
    store = ImageStore.locate(options.store_dir)
    hit = store.find(ref.name, ref.labels)
    if hit is not None and (hit.signed or options.skip_verify):
        reporter.info(f"using {ref} from the image store: {hit.id[:19]}")
        verified = _check_stored(store, hit, options=options, reporter=reporter)
        return FetchResult(entry=hit, path=store.aci_path(hit.id), from_store=True,
                           signature=verified.signature if verified else None, verified=verified)
    found = discover(ref, options.http())
    failures = []
    for endpoint in found.endpoints:
        try:
            return _fetch_url(endpoint.aci, ref, options=options, reporter=reporter,
                              asc_url=endpoint.asc)
        except FetchError as e:
            failures.append(e.message)
    raise FetchError(f"cannot fetch {ref}: " + "; ".join(failures))


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
    with tempfile.TemporaryDirectory(dir=store.temp_dir()) as tmp:
        aci_tmp, asc_tmp = Path(tmp) / "image.aci", Path(tmp) / "image.aci.asc"
        download(url, aci_tmp, options=options, reporter=reporter)
        asc_url = asc_url or url + ".asc"
        has_asc = _download_signature(asc_url, asc_tmp, options, reporter)
        manifest = aci.read_manifest(aci_tmp)
        labels = tuple((lbl.name, lbl.value) for lbl in manifest.labels)
        if ref is not None:
            _check_match(ref, manifest.name, labels, url)
        if has_asc:
            verified = _verify(aci_tmp, asc_tmp, manifest.name, options=options,
                               reporter=reporter, shown_as=url)
        else:
            _missing_signature(url, asc_url, options, reporter, manifest.name)
            verified = None
        entry = store.add(aci_tmp, asc_tmp if has_asc else None, image_id=aci.image_id(aci_tmp),
                          name=manifest.name, labels=labels)
    path = store.aci_path(entry.id)
    if verified is not None:
        verified = replace(verified, image=path, signature=store.asc_path(entry.id))
    reporter.info(f"stored {manifest.name} as {entry.id}")
    return FetchResult(entry=entry, path=path, from_store=False, verified=verified,
                       signature=verified.signature if verified else None)


def _fetch_path(path: Path, *, options: FetchOptions, reporter: Reporter) -> FetchResult:
    if not path.is_file():
        raise FetchError(f"{path}: no such image file")
    store = ImageStore.locate(options.store_dir)
    verified = verify_local(path, TrustStore.locate(options.trust_store), reporter)
    manifest = aci.read_manifest(path)
    with tempfile.TemporaryDirectory(dir=store.temp_dir()) as tmp:
        copy = Path(tmp) / "image.aci"
        shutil.copyfile(path, copy)
        asc = None
        if verified is not None:
            asc = Path(tmp) / "image.aci.asc"
            shutil.copyfile(verified.signature, asc)
        entry = store.add(copy, asc, image_id=aci.image_id(copy), name=manifest.name,
                          labels=tuple((lbl.name, lbl.value) for lbl in manifest.labels))
    return FetchResult(entry=entry, path=store.aci_path(entry.id), from_store=False,
                       verified=verified, signature=store.asc_path(entry.id) if asc else None)


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
        download(url, dest, options=options, reporter=reporter, what="signature")
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
    return int(value) if value and value.isdigit() else None


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
    base = f"{entry.name.rsplit('/', 1)[-1]}-{version}.aci"
    output_dir.mkdir(parents=True, exist_ok=True)
    sources = [(result.path, output_dir / base)]
    if result.signature is not None:
        sources.append((result.signature, output_dir / f"{base}.asc"))
    for src, dst in sources:
        with src.open("rb") as f, atomic_write(dst, mode=0o644) as out:
            shutil.copyfileobj(f, out, CHUNK)
