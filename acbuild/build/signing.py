"""Build, signing: a signing build's image stays under a hidden name until its signature is
beside it.

The image is written into a hidden directory beside the output and signed there; only then
are the two put in place: the previous image removed, the signature renamed to
``IMAGE.asc``, the image to ``IMAGE``. A build killed at any instant, SIGKILL included
(where no cleanup runs), leaves the previous image with its signature or the new pair, and
at worst, for the instant between the renames, a signature with no image beside it: never
an image without the signature asked for, nor one beside a signature of other bytes. A
failed signature leaves the previous pair as it was.

The hidden directory is named after its build and held (a flock) from its making to its
removal (acbuild.fs.leftovers), so what a killed build left is swept by the next build or
write of that output, and a live build's never, from whatever PID namespace (RT4-2: a bare
hidden file was unheld between its writing and its signing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from acbuild.errors import AcbuildError
from acbuild.fs.atomic import refuse_to_replace, remove_output
from acbuild.fs.leftovers import new_held_dir, sweep_at
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
        self._parent: int | None = None  # the output's directory
        self._hidden: tuple[str, int] | None = None  # the held directory there, its fd

    def path_for(self, output: Path) -> Path:
        """The hidden name the image is written to instead of ``output``."""
        # Signals held: one raised between the directory's making and its recording here
        # would leave it behind for good (``discard`` removes only what is recorded).
        with deferred():
            return self._make_hidden(output)

    def _make_hidden(self, output: Path) -> Path:
        try:
            self._parent = os.open(output.parent,
                                   os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            # what killed signing builds left: hidden directories, and older builds' files
            for prefix in (f".{output.name}.", f"..{output.name}.", f".{output.name}.asc."):
                sweep_at(self._parent, prefix, ".tmp")
            self._hidden = new_held_dir(self._parent, f".{output.name}.", ".tmp")
        except OSError as e:
            raise AcbuildError(f"cannot write {output}: {reason(e, output)}") from None
        self._output = output
        return output.parent / self._hidden[0] / output.name

    def publish(self, signer: Signer, key: str) -> Path:
        """Sign the written image and put it and its signature in place; the signature's
        path."""
        from acbuild.trust.sign import signature_path  # gpg's modules: signing builds only

        assert self._output is not None and self._hidden is not None, "path_for first"
        output, hidden = self._output, self._output.parent / self._hidden[0]
        image = hidden / output.name
        signature = hidden / signature_path(output).name
        signer(image, key, signature, output)
        # what appeared at either name while the image was written and signed (a device, a
        # FIFO) stays, as an unsigned build's commit leaves it (red team RO-3)
        refuse_to_replace(signature_path(output))
        remove_output(output)
        try:
            with deferred():  # a Ctrl-C does not part the pair (a SIGKILL can: see above)
                os.replace(signature, signature_path(output))
                os.replace(image, output)
        except OSError as e:
            raise AcbuildError(f"cannot write {output}: {reason(e, output)}") from None
        self.discard()
        with suppress(OSError):
            fd = os.open(output.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return signature_path(output)

    def discard(self) -> None:
        """Remove the hidden directory with whatever is still in it."""
        if self._hidden is not None:
            from acbuild.fs.staging import remove_at

            name, held = self._hidden
            assert self._parent is not None
            with suppress(OSError):
                remove_at(self._parent, name)
            os.close(held)
            self._hidden = None
        if self._parent is not None:
            os.close(self._parent)
            self._parent = None
