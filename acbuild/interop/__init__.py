"""Docker and OCI in and out: reading docker-archive and OCI inputs as digest-checked
streams, converting them to a rootfs, and exporting an ACI as an OCI layout or archive.

May import: acbuild.trust and the layers below it; not acbuild.distribution.
"""
