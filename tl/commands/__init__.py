"""The command layer's commands, one module each, listed in ``tl.cli.COMMANDS`` and imported when run."""
