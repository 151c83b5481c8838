"""The build itself: loading bases, COPY, executing a plan stage by stage against the
step cache and sandbox, manifest edits, the whole build and --check-repro.

May import: acbuild.cache, acbuild.sandbox and every layer below them.
"""
