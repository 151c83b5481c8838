"""The Acfile language: jinja2 rendering, the Lark grammar, words and instruction
builders, the instruction dataclasses, formatting, and the build context beside the Acfile.

May import: acbuild.image, acbuild.fs and the top-level modules.
"""
