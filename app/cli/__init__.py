"""The `roost` command (the console entry point is roost.cli:main); see main.py."""

from roost.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
