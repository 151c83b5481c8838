"""Commands: one module a verb, each exporting a click command named ``command``."""
