"""The ACI format: the manifest model and its AppC rules, tar reading and writing under
limits, extraction, compression, the image ID, writing an .aci, and validate/inspect/diff.

May import: acbuild.fs and the top-level errors, report and signals modules.
"""
