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
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Mapping

from acbuild.distribution.registry.reference import RegistryError
from acbuild.terminal import escape

_TIMEOUT = 60.0  # a keychain may ask the user to unlock it
_OUTPUT_LIMIT = 1 << 20
_REASON_LIMIT = 4096  # of its stderr, for the message
_EXIT_GRACE = 0.5  # how long a child it left behind may hold its pipes open after it exits
# What docker-credential-helpers print (stdout, exit 1) when they hold nothing for the URL.
_NOT_FOUND = "credentials not found in native keychain"


def program(helper: str) -> str:
    return f"docker-credential-{helper}"


def _locate(helper: str, env: Mapping[str, str]) -> str:
    name = program(helper)
    # Only absolute PATH entries: an empty or relative one means the current directory, which
    # may be a cloned repository shipping a "helper" (Go's LookPath refuses it too).
    search = os.pathsep.join(d for d in env.get("PATH", os.defpath).split(os.pathsep)
                             if os.path.isabs(d))
    if not helper or "/" in helper or (path := shutil.which(name, path=search)) is None:
        raise RegistryError(f"the docker config names the credential helper {escape(name)!r}, "
                            "which is not on PATH",
                            hint="install it, or remove credsStore/credHelpers from the config")
    return path


def _communicate(argv: list[str], stdin: bytes, env: Mapping[str, str]
                 ) -> tuple[int | None, bytes, bytes]:
    """(exit status or None on timeout, stdout up to the limit + 1, stderr's start). Reads
    both pipes bounded, so a helper printing without end costs no memory. The helper stays in
    the caller's session and process group, as docker runs it: a keychain that asks to be
    unlocked opens the terminal, which a session or group of its own would lose or stop on.
    So only the helper itself is killed when it overstays; a child it left holding the pipes
    is waited for no longer than a moment."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(env))
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    pending = memoryview(stdin)
    deadline = time.monotonic() + _TIMEOUT
    try:
        with selectors.DefaultSelector() as sel:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map() and len(out) <= _OUTPUT_LIMIT:
                if proc.poll() is not None:
                    deadline = min(deadline, time.monotonic() + _EXIT_GRACE)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for key, _ in sel.select(min(left, 0.1)):
                    if key.fileobj is proc.stdin:
                        try:
                            pending = pending[os.write(proc.stdin.fileno(), pending):]
                        except BrokenPipeError:
                            pending = pending[:0]
                        if not pending:
                            sel.unregister(proc.stdin)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    elif key.data is out or len(err) < _REASON_LIMIT:
                        key.data.extend(chunk)
        status = proc.poll()
        if status is None and time.monotonic() < deadline and len(out) <= _OUTPUT_LIMIT:
            status = proc.wait(max(0.0, deadline - time.monotonic()))
        return status, bytes(out), bytes(err[:_REASON_LIMIT])
    except subprocess.TimeoutExpired:
        return None, bytes(out), bytes(err[:_REASON_LIMIT])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()


def _run(helper: str, verb: str, stdin: bytes, env: Mapping[str, str], *,
         secret: str | None = None) -> tuple[bool, bytes]:
    """(ok, stdout); ok is False only for the helper's "not found" answer."""
    name = program(helper)
    try:
        status, out, err = _communicate([_locate(helper, env), verb], stdin, env)
    except OSError as e:
        raise RegistryError(f"cannot run the credential helper {name}: "
                            f"{e.strerror or e}") from None
    if len(out) > _OUTPUT_LIMIT:
        raise RegistryError(f"the credential helper {name} printed more than 1 MiB ({verb})")
    if status is None:
        raise RegistryError(f"the credential helper {name} did not answer within "
                            f"{_TIMEOUT:.0f} s ({verb})")
    if status == 0:
        return True, out
    if _NOT_FOUND in out.decode(errors="replace"):
        return False, b""
    # Its stderr says why; stdout is not shown, since it could hold a secret — and neither is
    # the secret given to it, should the helper echo its input.
    why = err.decode(errors="replace").strip().splitlines()
    reason = why[0] if why else ""
    if secret:
        for form in {secret, json.dumps(secret)[1:-1]}:
            reason = reason.replace(form, "***")
        if _shows_part_of(reason, secret):  # echoed in some other spelling
            reason = "(its message is not shown: it quotes what it was given)"
    detail = f": {escape(reason[:200])}" if reason else ""
    raise RegistryError(f"the credential helper {name} failed ({verb}, exit {status}){detail}")


def _shows_part_of(text: str, secret: str) -> bool:
    width = min(len(secret), 6)
    return any(secret[i:i + width] in text for i in range(len(secret) - width + 1))


def get(helper: str, server: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(username, secret) the helper keeps for ``server``, or None when it keeps none."""
    ok, out = _run(helper, "get", server.encode(), env)
    if not ok:
        return None
    name = program(helper)
    try:
        doc = json.loads(out)
    except (ValueError, UnicodeDecodeError, RecursionError):
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
    _run(helper, "store", json.dumps(doc).encode(), env, secret=secret)


def erase(helper: str, server: str, env: Mapping[str, str]) -> bool:
    """Whether the helper held something for ``server`` (and now does not)."""
    ok, _ = _run(helper, "erase", server.encode(), env)
    return ok
