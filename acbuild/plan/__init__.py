"""From instructions to a plan: base references, stages, numbered steps and every
semantic check (no I/O), plus lint, which reads a plan.

May import: acbuild.acfile, acbuild.image, acbuild.fs and the top-level modules.
"""
