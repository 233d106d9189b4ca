"""Shared CLI plumbing for both console scripts: one-line errors unless --debug."""
from __future__ import annotations

import sys

import click

from clmer_features.errors import ClmerError

debug_option = click.option(
    "--debug", is_flag=True, help="Show full tracebacks instead of one-line errors."
)


def run_cli(group: click.Group) -> None:
    """Run a click group; user errors become one line on stderr and exit code 2."""
    debug = "--debug" in sys.argv[1:]
    try:
        rv = group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClmerError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
