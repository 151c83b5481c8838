"""Build, signing: a signing build's image stays under a hidden name until its signature is
beside it.

The image is written to a temporary name in the output's directory and signed there; only
then are the two put in place: the previous image removed, the signature renamed to
``IMAGE.asc``, the image to ``IMAGE``. A build killed at any instant, SIGKILL included
(where no cleanup runs), leaves the previous image with its signature or the new pair, and
at worst, for the instant between the renames, a signature with no image beside it: never
an image without the signature asked for, nor one beside a signature of other bytes. A
failed signature leaves the previous pair as it was.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from acbuild.errors import AcbuildError
from acbuild.fs.leftovers import hold, owner_tag, sweep
from acbuild.fs.reasons import reason
from acbuild.signals import deferred

# Signs the image at the first path with the key, writing the signature to the second path;
# the third is the image's name in the log.
Signer = Callable[[Path, str, Path, Path], None]


class UnsignedImage:
    """Where a signing build writes its image (``path_for``), then signs and publishes it
    (``publish``); ``discard`` removes whatever of it is still hidden."""

    def __init__(self) -> None:
        self._output: Path | None = None
        self._hidden: list[Path] = []
        self._held: int | None = None

    def path_for(self, output: Path) -> Path:
        """The hidden name the image is written to instead of ``output``."""
        # What killed signing builds left: hidden images and signatures, and the writers'
        # temporary files of those.
        for prefix in (f".{output.name}.", f".{output.name}.asc."):
            sweep(output.parent, prefix, ".tmp")
            sweep(output.parent, "." + prefix, ".tmp")
        self._output = output
        return self._hide(output)

    def publish(self, signer: Signer, key: str) -> Path:
        """Sign the written image and put it and its signature in place; the signature's
        path."""
        from acbuild.trust.sign import signature_path  # gpg's modules: signing builds only

        assert self._output is not None and self._hidden, "path_for first"
        image, output = self._hidden[0], self._output
        self._hold(image)
        signature = self._hide(signature_path(output))
        signer(image, key, signature, output)
        try:
            with deferred():  # a Ctrl-C does not part the pair (a SIGKILL can: see above)
                with suppress(FileNotFoundError):
                    os.unlink(output)
                os.replace(signature, signature_path(output))
                os.replace(image, output)
        except OSError as e:
            raise AcbuildError(f"cannot write {output}: {reason(e, output)}") from None
        self._hidden.clear()
        with suppress(OSError):
            fd = os.open(output.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return signature_path(output)

    def discard(self) -> None:
        for path in self._hidden:
            with suppress(FileNotFoundError):
                os.unlink(path)
        if self._held is not None:
            os.close(self._held)

    def _hide(self, path: Path) -> Path:
        hidden = path.with_name(f".{path.name}.{owner_tag()}.{secrets.token_hex(6)}.tmp")
        self._hidden.append(hidden)
        return hidden

    def _hold(self, image: Path) -> None:
        # In use, as the writer's temporary file was: a sweep from another PID namespace,
        # where this pid looks dead, leaves it alone.
        try:
            self._held = os.open(image, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise AcbuildError(f"cannot sign {image}: {reason(e, image)}") from None
        if not hold(self._held):
            raise AcbuildError(f"cannot sign {self._output}: its image was removed while "
                               "it was being written (another build of the same output?)")
