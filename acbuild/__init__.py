"""acbuild-py: a declarative, reproducible builder for App Container images.

The package follows the build pipeline: render -> parse -> plan -> execute -> finalize.
"""

__version__ = "0.1.0"
