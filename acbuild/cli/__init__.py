"""The command line: the click entry point, one module a verb (commands/), and the
console reporters. The only layer that prints or exits.

May import: every layer.
"""
