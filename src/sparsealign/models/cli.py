"""CLI verbs of this stage (filled in by its issue)."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add this stage's verbs to the top-level group."""
