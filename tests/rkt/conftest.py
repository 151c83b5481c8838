"""The real rkt as judge: fixtures for a throwaway rkt, an RSA signing key, signed example
images and the loopback discovery server.

The AppC reference tools come from ``bash ../shared/oracles/install.sh`` (CI runs it); on a
fresh clone without them every test here is skipped with that reason. rkt's state lives in
the test's own directories (``--dir`` and the three config dirs), ``rkt run`` runs inside
``unshare --mount --propagation private`` (stage1-fly bind-mounts /dev, /proc and /sys into
the pod until ``rkt gc``), and every environment is garbage-collected before removal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO
from tests.support.busybox import BUSYBOX, busybox_available
from tests.support.cli import acbuild
from tests.support.httpserver import TlsFiles, make_tls

ORACLES = Path("/opt/oracles/bin")
RKT = ORACLES / "rkt"
# with-discovery-server.sh stays in the shared folder beside the clone (not installed).
DISCOVERY = Path(os.environ.get("ACBUILD_ORACLES_LIB", REPO.parent / "shared" / "oracles" / "lib")
                 ) / "with-discovery-server.sh"
NOT_INSTALLED = "rkt oracles not installed: run bash ../shared/oracles/install.sh"
NAMES = "example.com example.org"


def _missing() -> str | None:
    if not RKT.is_file():
        return NOT_INSTALLED
    if os.geteuid() != 0:
        return "rkt needs root (rkt run, unshare and the discovery namespace)"
    for tool in ("gpg", "unshare", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not busybox_available():
        return "busybox-static is not installed"
    return None


@pytest.fixture(autouse=True)
def _needs_rkt() -> None:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)


def need_discovery() -> None:
    if not DISCOVERY.is_file():
        pytest.skip(f"{DISCOVERY} not found: the discovery tests need ../shared/oracles/lib "
                    "beside the clone (or $ACBUILD_ORACLES_LIB)")


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    home: Path  # GnuPG home holding the secret key
    fingerprint: str
    public: Path  # armored public key


@pytest.fixture(scope="session")
def rsa_key() -> Iterator[SigningKey]:
    """One RSA signing key for the session: rkt reads no EdDSA keys."""
    home = Path(tempfile.mkdtemp(prefix="acb-rkt-gpg-"))  # short: gpg-agent's socket path
    home.chmod(0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "Rkt Tester <rkt@example.com>", "rsa2048",
                    "sign", "never"], check=True, capture_output=True)
    listing = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True,
                             capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    public = home / "signer.asc"
    public.write_bytes(subprocess.run([*gpg, "--armor", "--export", fpr], check=True,
                                      capture_output=True).stdout)
    yield SigningKey(home=home, fingerprint=fpr.lower(), public=public)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False,
                   capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a certificate for the discovery names."""
    return make_tls(tmp_path_factory.mktemp("tls"), hosts=tuple(NAMES.split()))


class Rkt:
    """One throwaway rkt: its data and config directories live under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = [str(RKT), f"--dir={root / 'data'}", f"--local-config={root / 'local'}",
                       f"--system-config={root / 'system'}", f"--user-config={root / 'user'}"]

    def command(self, *args: str | Path, run: bool = False) -> list[str]:
        """The argv of ``rkt ARGS``; with ``run``, inside a private mount namespace."""
        argv = [*self.prefix, *map(str, args)]
        return ["unshare", "--mount", "--propagation", "private", *argv] if run else argv

    def shell(self, *args: str | Path, run: bool = False) -> str:
        """The same as one shell word list, for scripts run in the discovery namespace."""
        return " ".join(_quote(a) for a in self.command(*args, run=run))

    def __call__(self, *args: str | Path, run: bool = False, check: bool = True,
                 env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.command(*args, run=run), capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"rkt {' '.join(map(str, args))} failed "
                                 f"({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def trust(self, prefix: str, key: Path) -> None:
        self("trust", f"--prefix={prefix}", "--skip-fingerprint-review", key)

    def close(self) -> None:
        self("gc", "--grace-period=0s", check=False)
        self("image", "gc", "--grace-period=0s", check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)


def _quote(word: object) -> str:
    import shlex

    return shlex.quote(str(word))


@pytest.fixture
def rkt(tmp_path: Path) -> Iterator[Rkt]:
    env = Rkt(tmp_path / "rkt")
    env.root.mkdir()
    try:
        yield env
    finally:
        env.close()


def discovery(docroot: Path, script: str, *, tls: TlsFiles | None,
              env: dict[str, str] | None = None,
              timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) in a private network namespace where example.com and example.org
    are 127.0.0.1 and serve ``docroot`` on ports 80 (and 443 with ``tls``)."""
    need_discovery()
    argv = ["bash", str(DISCOVERY), "--docroot", str(docroot), "--names", NAMES]
    extra = {}
    if tls is not None:
        argv += ["--cert", str(tls.cert), "--key", str(tls.key)]
        extra["SSL_CERT_FILE"] = str(tls.ca)
    return subprocess.run([*argv, "--", "sh", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "CI": "true", **extra, **(env or {})},
                          timeout=timeout, check=False)


def build(acfile: Path, output: Path, key: SigningKey | None, *extra: str | Path,
          env: dict[str, str] | None = None) -> Path:
    """``acbuild-py build`` of ``acfile`` to ``output``, signed with ``key`` when given."""
    sign: Sequence[str | Path] = ("--sign", key.fingerprint, "--gpg-home", key.home) if key \
        else ()
    r = acbuild("build", "--no-cache", acfile, "-o", output, *sign, *extra, env=env)
    assert r.code == 0, r.stderr
    return output


def trust_in_acbuild(key: SigningKey, prefix: str, env: dict[str, str] | None = None) -> None:
    """``acbuild-py trust`` of the key for ``prefix`` (in $XDG_CONFIG_HOME, or ``env``'s)."""
    r = acbuild("trust", "--prefix", prefix, "--yes", key.public, env=env)
    assert r.code == 0, r.stderr


def sign(image: Path, key: SigningKey) -> Path:
    r = acbuild("sign", image, "--key", key.fingerprint, "--gpg-home", key.home)
    assert r.code == 0, r.stderr
    return image.with_name(image.name + ".asc")


@pytest.fixture(scope="session")
def examples_built(tmp_path_factory: pytest.TempPathFactory, hello_binary: Path,
                   rsa_key: SigningKey) -> Path:
    """Every example image, built and signed with the RSA key (in a copy of examples/)."""
    if _missing() is not None:
        pytest.skip(_missing() or "")
    top = tmp_path_factory.mktemp("examples")
    # Its own user dirs: a session fixture runs outside the per-test ones.
    env = {name: str(top / name.lower()) for name in
           ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME")}
    where = top / "Acfiles"
    shutil.copytree(EXAMPLES, where)
    shutil.copy2(hello_binary, where / "hello" / "hello")
    shutil.copy2(BUSYBOX, where / "busybox" / "busybox")
    # busybox-app begins from the signed busybox.aci: acbuild-py verifies it.
    trust_in_acbuild(rsa_key, "example.com/busybox", env)
    build(where / "hello" / "Acfile", where / "hello.aci", rsa_key, env=env)
    build(where / "busybox" / "Acfile", where / "busybox-app" / "busybox.aci", rsa_key,
          env=env)
    build(where / "busybox-app" / "Acfile", where / "busybox-app.aci", rsa_key, env=env)
    return where
