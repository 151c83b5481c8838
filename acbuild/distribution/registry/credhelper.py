"""Registries: docker's credential helpers (``docker-credential-NAME get|store|erase``).

A docker config's ``credsStore`` (every registry) or ``credHelpers`` (per registry) names a
program that keeps the secrets in the desktop's keychain, ``pass`` or a cloud's IAM instead of
the file. The protocol: the verb as the only argument, the server URL (or a JSON credential for
``store``) on stdin, ``{"ServerURL", "Username", "Secret"}`` on stdout; a Username of
``<token>`` makes Secret an identity token (an OAuth2 refresh token), not a password.
A helper is a program of the user's choosing: it is run with the caller's environment, but
nothing it prints reaches a message unescaped, and its stdout never does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping

from acbuild.distribution.registry.reference import RegistryError
from acbuild.terminal import escape

_TIMEOUT = 60.0  # a keychain may ask the user to unlock it
_OUTPUT_LIMIT = 1 << 20
# What docker-credential-helpers print (stdout, exit 1) when they hold nothing for the URL.
_NOT_FOUND = "credentials not found in native keychain"


def program(helper: str) -> str:
    return f"docker-credential-{helper}"


def _run(helper: str, verb: str, stdin: bytes, env: Mapping[str, str]) -> tuple[bool, bytes]:
    """(ok, stdout); ok is False only for the helper's "not found" answer."""
    name = program(helper)
    if not helper or "/" in helper or (path := shutil.which(name, path=env.get("PATH"))) is None:
        raise RegistryError(f"the docker config names the credential helper {escape(name)!r}, "
                            "which is not on PATH",
                            hint="install it, or remove credsStore/credHelpers from the config")
    try:
        done = subprocess.run([path, verb], input=stdin, capture_output=True,
                              timeout=_TIMEOUT, env=dict(env), check=False)
    except subprocess.TimeoutExpired:
        raise RegistryError(f"the credential helper {name} did not answer within "
                            f"{_TIMEOUT:.0f} s ({verb})") from None
    except OSError as e:
        raise RegistryError(f"cannot run the credential helper {name}: "
                            f"{e.strerror or e}") from None
    if done.returncode == 0:
        return True, done.stdout[:_OUTPUT_LIMIT + 1]
    if _NOT_FOUND in done.stdout.decode(errors="replace"):
        return False, b""
    # Its stderr says why; stdout is not shown, since it could hold a secret.
    why = done.stderr.decode(errors="replace").strip().splitlines()
    detail = f": {escape(why[0][:200])}" if why else ""
    raise RegistryError(f"the credential helper {name} failed ({verb}, exit "
                        f"{done.returncode}){detail}")


def get(helper: str, server: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(username, secret) the helper keeps for ``server``, or None when it keeps none."""
    ok, out = _run(helper, "get", server.encode(), env)
    if not ok:
        return None
    name = program(helper)
    if len(out) > _OUTPUT_LIMIT:
        raise RegistryError(f"the credential helper {name} printed more than 1 MiB")
    try:
        doc = json.loads(out)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"the credential helper {name} printed no JSON credential") \
            from None
    user, secret = (doc.get("Username"), doc.get("Secret")) if isinstance(doc, dict) else \
        (None, None)
    if not isinstance(user, str) or not isinstance(secret, str):
        raise RegistryError(f"the credential helper {name} printed no Username and Secret")
    if not secret:
        return None
    return user, secret


def store(helper: str, server: str, username: str, secret: str,
          env: Mapping[str, str]) -> None:
    doc = {"ServerURL": server, "Username": username, "Secret": secret}
    _run(helper, "store", json.dumps(doc).encode(), env)


def erase(helper: str, server: str, env: Mapping[str, str]) -> bool:
    """Whether the helper held something for ``server`` (and now does not)."""
    ok, _ = _run(helper, "erase", server.encode(), env)
    return ok
