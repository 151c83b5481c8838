"""Getting images by name and handing them out: AppC discovery, verified fetch, the
local image store, and a static image repository (publish).

May import: acbuild.trust and the layers below it; not acbuild.interop.
"""
