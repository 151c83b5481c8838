"""The step cache: step keys and the stat cache, the content-addressed store of step
results and images, and verified snapshot trees.

May import: acbuild.distribution, acbuild.interop and the layers below; not acbuild.sandbox.
"""
