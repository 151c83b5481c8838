"""Filesystem primitives every layer shares: safe joins below a root, atomic writes,
staged rootfs trees with their owner and device records, and sweeping what killed runs left.

May import: acbuild.errors, acbuild.report, acbuild.signals (nothing else of acbuild).
"""
