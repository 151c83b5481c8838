"""Registries: the OCI distribution API — references, an authenticated HTTP session on httpx,
the credentials docker and podman keep, and pulling images into the content-addressed store.

Part of acbuild.distribution: may import acbuild.trust and the layers below, not acbuild.interop
(turning a pulled image into a rootfs is glue in acbuild.build and acbuild.cli).
"""
