"""CLI verbs of this module (filled in by its issue)."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add verbs to the top-level group (`cli.commands[\"<group>\"]` for shared groups)."""
