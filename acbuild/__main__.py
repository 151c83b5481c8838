"""Entry point for ``python -m acbuild``."""

from acbuild.cli.main import main

if __name__ == "__main__":
    main()
