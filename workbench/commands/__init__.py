"""The command line's commands, one module each: `HELP`, `add_arguments(parser)` and `run(args)`.
`workbench.cli` registers them; `python -m workbench COMMAND --help` shows each one's options."""
