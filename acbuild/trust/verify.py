"""Trust: verifying an image's detached signature against the keys trusted for its name.

Only root keys and keys of prefixes covering the manifest name are imported, into a fresh
temporary keyring; the user's own keyring is never consulted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from acbuild.errors import TrustError
from acbuild.fs.regular import read_regular
from acbuild.trust.gpg import (
    gpg_messages,
    gpg_path,
    import_keys,
    status_lines,
    temporary_keyring,
)
from acbuild.trust.names import check_image_name
from acbuild.trust.sign import signature_path
from acbuild.trust.truststore import TrustedKey, TrustStore

MAX_SIGNATURE = 1 << 20  # gpg is handed the whole file; real ones are a few hundred bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    image: Path
    signature: Path
    name: str
    fingerprint: str  # the primary key that signed, lowercase
    signer: str  # its user id
    trusted_as: str  # "root" or "prefix example.com/app"


def manifest_name(image: Path) -> str:
    from acbuild.image.aci import (
        read_manifest,  # the image reader; imported late to keep deps light
    )

    return read_manifest(image).name


def verify_image(
    image: Path,
    store: TrustStore,
    *,
    signature: Path | None = None,
    name: str | None = None,
    shown_as: str | None = None,
) -> VerifyResult:
    """Check ``image``'s signature against the keys ``store`` trusts for its name.

    ``name`` defaults to the image's manifest name; a caller that has already read the
    manifest (or must hold the image to a requested name) passes it. ``shown_as`` names the
    image in messages (a download's URL rather than its temporary file).
    """
    asc = signature if signature is not None else signature_path(image)
    try:
        # Read once, bounded, and only from a regular file: a FIFO there cannot hang us.
        sig = read_regular(asc, limit=MAX_SIGNATURE)
    except FileNotFoundError:
        raise TrustError(f"{image} is not signed: {asc} does not exist",
                         hint="sign it with `acbuild-py sign`, or pass --signature FILE") from None
    except OSError as e:
        raise TrustError(f"cannot read signature {asc}: {e.strerror or e}") from None
    if len(sig) > MAX_SIGNATURE:
        raise TrustError(f"{asc} is larger than {MAX_SIGNATURE} bytes: not a signature")
    name = check_image_name(manifest_name(image) if name is None else name,
                            shown_as or str(image))
    trusted = store.keys_for(name)
    if not trusted:
        raise TrustError(f"no keys are trusted for {name} in {store.root}",
                         hint=f"trust the publisher's key: "
                              f"acbuild-py trust --prefix {name} KEYFILE")
    with temporary_keyring() as gpg:
        _import_trusted(gpg, trusted)
        result = gpg.verify_file(io.BytesIO(sig), gpg_path(image))
    statuses = status_lines(result)
    verdict = _judge(statuses, result, shown=shown_as or str(image), asc=asc, name=name,
                     store=store, trusted=trusted)
    return VerifyResult(image=image, signature=asc, name=name, **verdict)


def _import_trusted(gpg: object, trusted: tuple[TrustedKey, ...]) -> None:
    for key in trusted:
        try:
            data = read_regular(key.path)
        except OSError as e:
            raise TrustError(f"cannot read trusted key {key.path}: {e.strerror}") from None
        held = import_keys(gpg, data)
        # rkt's rule: a key file is named after the key it holds; anything else is tampering.
        if held != (key.fingerprint,):
            raise TrustError(f"trust store file {key.path} holds {', '.join(held)}, "
                             "not the key its name says")


def _judge(statuses: tuple[tuple[str, str], ...], result: object, *, shown: str, asc: Path,
           name: str, store: TrustStore, trusted: tuple[TrustedKey, ...]) -> dict[str, str]:
    seen = dict(statuses)
    if "BADSIG" in seen:
        raise TrustError(f"bad signature on {shown}: the image or its signature was changed "
                         "after signing")
    if "NO_PUBKEY" in seen or ("ERRSIG" in seen and "VALIDSIG" not in seen):
        raise _untrusted(seen, shown=shown, name=name, store=store)
    valid = seen.get("VALIDSIG", "").split()
    if "NODATA" in seen and not valid:
        raise TrustError(f"cannot verify {shown}: {asc} holds no OpenPGP signature")
    if not valid:
        detail = gpg_messages(result) or "no OpenPGP signature found"
        raise TrustError(f"cannot verify {shown} with {asc.name}: {detail}")
    primary = (valid[9] if len(valid) >= 10 else valid[0]).lower()
    signer = _uid(seen)
    if "REVKEYSIG" in seen:
        raise TrustError(f"{shown} is signed by key {primary} ({signer}), which has been revoked")
    if "EXPKEYSIG" in seen:
        raise TrustError(f"{shown} is signed by key {primary} ({signer}), which has expired")
    if "EXPSIG" in seen:
        raise TrustError(f"the signature on {shown} by {primary} ({signer}) has expired")
    if "GOODSIG" not in seen:
        raise TrustError(f"cannot verify {shown}: {gpg_messages(result) or 'gpg said no'}")
    scopes = [k.scope for k in trusted if k.fingerprint == primary]
    return {"fingerprint": primary, "signer": signer,
            "trusted_as": scopes[0] if scopes else "root"}


def _uid(seen: dict[str, str]) -> str:
    for key in ("GOODSIG", "EXPKEYSIG", "REVKEYSIG"):
        if key in seen:
            return seen[key].partition(" ")[2]
    return "(unknown user id)"


def _untrusted(seen: dict[str, str], *, shown: str, name: str, store: TrustStore) -> TrustError:
    errsig = seen.get("ERRSIG", "").split()
    key_id = (errsig[6] if len(errsig) >= 7 else seen.get("NO_PUBKEY", "?")).lower()
    elsewhere = sorted({k.scope for k in store.all_keys() if k.fingerprint.endswith(key_id)})
    hint = (f"that key is trusted only for {', '.join(elsewhere)}" if elsewhere
            else f"if you trust it: acbuild-py trust --prefix {name} KEYFILE")
    return TrustError(f"{shown} is signed by key {key_id}, which is not trusted for {name}",
                      hint=hint)
