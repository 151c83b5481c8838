"""TLS for acbuild-py's HTTPS clients (discovery, downloads, registries): the system's CAs
plus --ca-file, which adds a CA rather than replacing them.

The system's CA bundle (about 200 KB of PEM here, 17-22 ms to parse) is loaded by the first
TLS handshake, not when a client is made: a pull from a plain-http registry
(--insecure-registry) never needs it, and such a pull's whole run is a few hundred ms. Go's
crypto/x509, which skopeo uses, defers its system roots the same way. A --ca-file is read at
once, so a bad one is reported before any work.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

from acbuild.errors import FetchError
from acbuild.fs.regular import open_regular


class _SystemTrustOnUse(ssl.SSLContext):
    """``create_default_context()``'s client settings (see ``tls_context``), the system's
    CAs loaded by the first wrap."""

    _loaded: bool
    _lock: threading.Lock

    def _load_system(self) -> None:
        with self._lock:
            if not self._loaded:
                self.load_default_certs(ssl.Purpose.SERVER_AUTH)
                self._loaded = True

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_system()
        return super().wrap_socket(sock, *args, **kwargs)

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any,
                 **kwargs: Any) -> ssl.SSLObject:
        self._load_system()  # TLS through an HTTPS proxy
        return super().wrap_bio(incoming, outgoing, *args, **kwargs)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's CAs (loaded on first use), plus ``ca_file``."""
    # What create_default_context() sets besides the CAs: PROTOCOL_TLS_CLIENT checks the
    # certificate and the host name; 3.13 adds two strictness flags; SSLKEYLOGFILE.
    context = _SystemTrustOnUse(ssl.PROTOCOL_TLS_CLIENT)
    if sys.version_info >= (3, 13):
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    if (keylog := os.environ.get("SSLKEYLOGFILE")) and not sys.flags.ignore_environment:
        context.keylog_filename = keylog
    # A certificate without subjectAltName is not matched by its subject's CN (RG-1), as
    # Go (skopeo, docker) and browsers refuse it; CPython would still accept it.
    context.hostname_checks_common_name = False
    context._loaded = False
    context._lock = threading.Lock()
    if ca_file is not None:
        try:
            # OpenSSL opens what it is given with a plain fopen(): a FIFO would block it
            # for ever. It is given the checked regular file, opened, by its /proc name.
            with open_regular(ca_file) as f:
                context.load_verify_locations(cafile=f"/proc/self/fd/{f.fileno()}")
        except ssl.SSLError as e:  # an OSError too: first
            raise FetchError(f"cannot use CA file {ca_file}: {e}") from None
        except OSError as e:
            raise FetchError(f"cannot use CA file {ca_file}: {e.strerror or e}") from None
    return context


# OpenSSL's X509_V_ERR_* codes the advice depends on (ssl has no names for them)
_NOT_YET_VALID, _EXPIRED = 9, 10
_NAME_MISMATCH = frozenset({62, 64})  # a host name, an IP address


def untrusted(host: str, error: ssl.SSLCertVerificationError, *,
              whose: str = "") -> tuple[str, str]:
    """What to say of ``host``'s certificate that failed verification, and the hint: what
    would fix it, without nudging towards trusting a certificate that may be an attacker's
    (a wrong name is not fixed by a CA, nor by turning TLS off). ``whose``, if given, says
    whose certificate it is when not the server's named in the rest of the error (a
    proxy's)."""
    said = f"the certificate of {host}{whose} is not trusted ({error.verify_message})"
    if error.verify_code in _NAME_MISMATCH:
        hint = (f"it is a certificate for another name than {host}: check the name; if it "
                "is right, whoever answered is not the server you named")
    elif error.verify_code in (_EXPIRED, _NOT_YET_VALID):
        hint = ("it is outside its validity period: check this machine's clock, else the "
                "server's certificate must be renewed")
    else:
        hint = ("if you trust the CA that signed it, pass its certificate with --ca-file (a "
                "certificate you did not expect can mean another is answering for the server)")
    return said, hint
