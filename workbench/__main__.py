"""`python -m workbench ...`: the command-line entry point (see `workbench.cli`)."""

from workbench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
