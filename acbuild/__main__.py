"""Entry point for ``python -m acbuild``."""

from acbuild.cli import main

if __name__ == "__main__":
    main()
