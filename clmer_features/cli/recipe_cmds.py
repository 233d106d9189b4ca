"""Placeholder: its owner replaces this module with real commands."""
import click


def register(group: click.Group) -> None:
    """Add this topic's commands to ``group``."""
