"""Subcommands of the `cxrdet` console script."""
