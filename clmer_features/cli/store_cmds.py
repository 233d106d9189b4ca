"""`clmer-features status | verify | gc`: inspect and maintain a store."""
from __future__ import annotations

from pathlib import Path

import click
import polars as pl

from clmer_features.manifest import read_manifest
from clmer_features.store import DEFAULT_CACHE, open_store
from clmer_features.store.maintenance import gc as gc_store
from clmer_features.store.maintenance import status as store_status
from clmer_features.store.maintenance import verify as verify_store

cache_option = click.option(
    "--cache", "cache_dir", default=DEFAULT_CACHE, show_default=True, envvar="CLMER_CACHE",
    type=click.Path(file_okay=False), help="Cache root (holds one folder per dataset).",
)


def _datasets(cache_dir: str, dataset: str | None) -> list[str]:
    if dataset:
        return [dataset]
    root = Path(cache_dir)
    found = sorted(p.name for p in root.iterdir() if (p / "features").is_dir()) if root.is_dir() else []
    if not found:
        raise click.ClickException(f"no stores under {root}")
    return found


@click.command("status")
@click.argument("manifest", type=click.Path(dir_okay=False))
@cache_option
@click.option("--dataset", help="Dataset name; default: the manifest file's stem.")
def status_cmd(manifest: str, cache_dir: str, dataset: str | None) -> None:
    """Per feature: clips of MANIFEST done, missing, failed and absent (no such modality)."""
    m = read_manifest(manifest, dataset=dataset)
    store = open_store(cache_dir, m.dataset)
    rows = store_status(store, m.df)
    if not rows:
        click.echo(f"{store.root}: no features yet")
        return
    click.echo(f"{store.root}: {len(m)} clips in manifest")
    click.echo(f"  {'feature':<16}{'spec':<14}{'done':>7}{'missing':>9}{'failed':>8}{'absent':>8}  state")
    for r in rows:
        state = "complete" if r.complete and not r.pending_parts else (
            f"{r.pending_parts} part(s) not finalized" if r.pending_parts else "not finalized")
        click.echo(f"  {r.feature:<16}{r.spec_id:<14}{r.done:>7}{r.missing:>9}{r.failed:>8}{r.absent:>8}  {state}")
    fails = store.ledger().filter(pl.col("kind") == "error")
    for row in fails.head(5).iter_rows(named=True):
        click.echo(f"  failed: {row['feature']} {row['clip_id']}: {row['stage']}: {row['error']}: {row['message'][:120]}")
    if fails.height > 5:
        click.echo(f"  ... {fails.height - 5} more failures in {store.root / 'ledger.parquet'}")


@click.command("verify")
@cache_option
@click.option("--dataset", help="Only this dataset (default: every store under --cache).")
def verify_cmd(cache_dir: str, dataset: str | None) -> None:
    """Recompute every checksum: catches flipped bytes and truncated or missing chunk files."""
    bad = 0
    for name in _datasets(cache_dir, dataset):
        rep = verify_store(open_store(cache_dir, name), progress=True)
        for p in rep.problems:
            click.echo(f"{name}: {p}", err=True)
        bad += len(rep.problems)
        click.echo(f"{name}: {rep.checked_parts} parts, {rep.checked_files} files checked, "
                   f"{'OK' if rep.ok else f'{len(rep.problems)} problem(s)'}")
    if bad:
        raise SystemExit(1)


@click.command("gc")
@cache_option
@click.option("--dataset", help="Only this dataset (default: every store under --cache).")
@click.option("--older-than", default=3600.0, show_default=True, type=float,
              help="Remove temporary parts untouched for this many seconds (a running writer's parts survive).")
@click.option("--superseded", is_flag=True, help="Also remove specs superseded by a newer finalized spec of the same feature.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def gc_cmd(cache_dir: str, dataset: str | None, older_than: float, superseded: bool, dry_run: bool) -> None:
    """Remove abandoned temporary parts; remove superseded specs only when asked."""
    verb = "would remove" if dry_run else "removed"
    for name in _datasets(cache_dir, dataset):
        rep = gc_store(open_store(cache_dir, name), older_than_s=older_than, superseded=superseded, dry_run=dry_run)
        for p in rep.removed_tmp + rep.removed_specs:
            click.echo(f"{name}: {verb} {p}")
        click.echo(f"{name}: {verb} {len(rep.removed_tmp)} temporary part(s), {len(rep.removed_specs)} superseded spec(s); "
                   f"kept {len(rep.kept_tmp)} recent temporary part(s)")


def register(group: click.Group) -> None:
    for cmd in (status_cmd, verify_cmd, gc_cmd):
        group.add_command(cmd)
