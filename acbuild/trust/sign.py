"""Finalize: signing an image — an ASCII-armored detached OpenPGP signature, IMAGE.aci.asc.

The signature is written atomically next to the image; the passphrase comes from a file, the
environment or gpg-agent, never from the Acfile.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from acbuild.errors import TrustError
from acbuild.fs.atomic import atomic_write, remove_output
from acbuild.fs.regular import open_regular
from acbuild.numbers import ascii_int
from acbuild.report import Reporter
from acbuild.trust.gpg import (
    KeyInfo,
    check_fingerprint,
    find_keys,
    gpg_messages,
    list_keys,
    open_gpg,
    status_lines,
)

PASSPHRASE_ENV = "ACBUILD_PASSPHRASE"
# libgpg-error codes (gpg-error.h) in gpg's "FAILURE sign <code>" status line.
_GPG_ERR_BAD_PASSPHRASE = 11
_GPG_ERR_NO_PASSPHRASE = frozenset({85, 99, 177})  # no pinentry, canceled, no passphrase


@dataclass(frozen=True, slots=True, kw_only=True)
class SignResult:
    signature: Path
    fingerprint: str
    uid: str


def signature_path(image: Path) -> Path:
    """Where an image's signature lives: ``IMAGE.aci.asc``."""
    return image.with_name(image.name + ".asc")


def remove_stale_signature(image: Path) -> None:
    """Remove IMAGE.asc before IMAGE is replaced, so no signature outlives the bytes it signed."""
    remove_output(signature_path(image))


def read_passphrase(
    passphrase_file: Path | None, env: Mapping[str, str] | None = None
) -> str | None:
    """The passphrase from ``--passphrase-file`` (first line), else $ACBUILD_PASSPHRASE, else
    None (gpg-agent asks or has it cached)."""
    if passphrase_file is not None:
        try:
            with io.TextIOWrapper(open_regular(passphrase_file), encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as e:
            raise TrustError(f"cannot read passphrase file {passphrase_file}: "
                             f"{e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise TrustError(f"cannot read passphrase file {passphrase_file}: {e}") from None
    value = (os.environ if env is None else env).get(PASSPHRASE_ENV)
    return value if value else None


def find_secret_key(key: str, gpg_home: Path | None) -> KeyInfo:
    """The one usable secret key ``key`` (id, fingerprint or e-mail) names."""
    where = f"GnuPG home {gpg_home}" if gpg_home else "the default GnuPG home"
    found = find_keys(open_gpg(gpg_home), key, secret=True)
    if not found:
        raise TrustError(
            f"no secret key {key!r} in {where}",
            hint="list keys with `gpg --list-secret-keys`, or pass --gpg-home",
        )
    if len(found) > 1:
        fprs = ", ".join(k.fingerprint for k in found)
        raise TrustError(f"key {key!r} is ambiguous in {where}: {fprs}",
                         hint="name the key by its fingerprint")
    info = found[0]
    # The secret listing does not carry validity; the public one does.
    public = [k for k in list_keys(open_gpg(gpg_home)) if k.fingerprint == info.fingerprint]
    if public and public[0].revoked:
        raise TrustError(f"cannot sign with key {info.fingerprint} ({info.uid}): it is revoked")
    if public and public[0].expired:
        raise TrustError(f"cannot sign with key {info.fingerprint} ({info.uid}): it has expired",
                         hint=f"extend it: gpg --quick-set-expire {info.fingerprint} 1y")
    return info


def sign_image(
    image: Path,
    key: str,
    *,
    gpg_home: Path | None = None,
    passphrase: str | None = None,
    reporter: Reporter,
    signature: Path | None = None,
    shown: Path | None = None,
) -> SignResult:
    """Write ``IMAGE.asc`` (or ``signature``), a detached armored signature over the image
    bytes, atomically. ``shown``: the image's name in the log (when ``image`` is the hidden
    name a build writes it to)."""
    if not image.exists():
        raise TrustError(f"cannot sign {image}: no such file")
    if passphrase is not None and any(c in passphrase for c in "\n\r\0"):
        raise TrustError("the passphrase must be a single line without NUL characters")
    info = find_secret_key(key, gpg_home)
    gpg = open_gpg(gpg_home)
    asc = signature_path(image) if signature is None else signature
    remove_output(asc)  # a device or FIFO there is refused, never removed (RO-1, RO-2)
    try:
        f = open_regular(image)
    except OSError as e:
        raise TrustError(f"cannot sign {image}: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        counted = _Counting(f)
        # python-gnupg reads the image in a thread of its own; the bar is reported from
        # this one (the step's), where reporters expect a step's transfers.
        with ThreadPoolExecutor(1, thread_name_prefix="gpg-sign") as pool:
            # passphrase given: python-gnupg feeds it on a pipe with --pinentry-mode loopback.
            job = pool.submit(
                gpg.sign_file, counted, keyid=check_fingerprint(info.fingerprint),
                passphrase=passphrase, detach=True, binary=False,
                extra_args=["--pinentry-mode", "loopback"] if passphrase is not None else None,
            )
            while True:
                try:
                    result = job.result(timeout=0.1)
                    break
                except FutureTimeout:
                    reporter.progress("sign", min(counted.done, size), size)
        reporter.progress("sign", size, size)
    _check_signed(result, info)
    with atomic_write(asc, mode=0o644) as out:
        out.write(result.data)
    reporter.info(f"signed {(shown or image).name} with {info.fingerprint} ({info.uid})")
    return SignResult(signature=asc, fingerprint=info.fingerprint, uid=info.uid)


class _Counting:
    """A binary file read through this counts the bytes read (from another thread)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.done += len(data)
        return data


def _check_signed(result: object, info: KeyInfo) -> None:
    statuses = dict(status_lines(result))
    who = f"key {info.fingerprint} ({info.uid})"
    if "SIG_CREATED" in statuses and bool(getattr(result, "data", None)):
        return
    code = _failure_code(statuses.get("FAILURE", ""))
    if "BAD_PASSPHRASE" in statuses or code == _GPG_ERR_BAD_PASSPHRASE:
        raise TrustError(f"wrong passphrase for {who}",
                         hint="check --passphrase-file or $ACBUILD_PASSPHRASE")
    if "KEYEXPIRED" in statuses:
        raise TrustError(f"cannot sign with {who}: it has expired")
    if "KEYREVOKED" in statuses:
        raise TrustError(f"cannot sign with {who}: it is revoked")
    if "MISSING_PASSPHRASE" in statuses or code in _GPG_ERR_NO_PASSPHRASE:
        raise TrustError(f"no passphrase for {who}",
                         hint="use --passphrase-file, $ACBUILD_PASSPHRASE or a gpg-agent")
    detail = gpg_messages(result) or "gpg gave no reason"
    raise TrustError(f"signing with {who} failed: {detail}")


def _failure_code(value: str) -> int | None:
    _, _, code = value.rpartition(" ")
    # The high bits name the component that failed; the low 16 bits are the error itself.
    number = ascii_int(code)
    return None if number is None else number & 0xFFFF
