"""What rkt, the reference executor, would refuse in a finished image: said at build time as
warnings, since the image itself is valid AppC and other tools may take it.

- ``rkt run`` needs ``os`` and ``arch`` labels, even for a local file, and runs os=linux only;
  ``rkt fetch`` always asks for os=linux and the host's arch.
- ``rkt fetch NAME`` discovers NAME over HTTPS: the name's first segment must be a host name
  a client can resolve (with a dot, or ``localhost``), or no fetch by name can find it.
"""

from __future__ import annotations

from acbuild.image.manifest import ImageManifest


def rkt_warnings(manifest: ImageManifest) -> tuple[str, ...]:
    labels = {lbl.name: lbl.value for lbl in manifest.labels}
    found: list[str] = []
    missing = [k for k in ("os", "arch") if k not in labels]
    if missing:
        found.append(f"the image has no {' or '.join(missing)} label: rkt refuses to run "
                     "it and no rkt fetch by name matches it")
    elif labels["os"] != "linux":
        found.append(f"the image is for os={labels['os']}: rkt runs and fetches os=linux "
                     "images only")
    host = manifest.name.split("/", 1)[0]
    if manifest.name and "." not in host and host != "localhost":
        found.append(f"rkt fetch {manifest.name} cannot discover this image: '{host}' is not "
                     "a host name (discovery asks https://" + host + "/...)")
    return tuple(found)
