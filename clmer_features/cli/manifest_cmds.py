"""`clmer-features manifest ...`: check manifests (recipes add `manifest from`)."""
from __future__ import annotations

import click

from clmer_features.manifest import read_manifest


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


@click.group("manifest")
def manifest_group() -> None:
    """Check manifests, or build them from official dataset label files."""


@manifest_group.command("check")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--dataset", help="Dataset name (store folder); default: the manifest file's stem.")
@click.option("--strict", is_flag=True, help="A missing media file is a problem (as extract --strict).")
def check(manifest: str, dataset: str | None, strict: bool) -> None:
    """Validate MANIFEST and print a summary (or every problem, with file, row and column)."""
    m = read_manifest(manifest, dataset=dataset, strict=strict)
    s = m.summary()
    click.echo(f"{s['manifest']}: OK, dataset {s['dataset']!r}")
    if s["missing_media"]:
        first = m.df.filter(m.df["missing"].is_not_null()).head(3)
        click.echo(f"  missing    {s['missing_media']} clip(s) whose media file is not there (extract records them "
                   "in the ledger as 'missing'), e.g.")
        for cid, why in first.select("clip_id", "missing").iter_rows():
            click.echo(f"             {cid}: {why}")
    click.echo(f"  clips      {s['clips']} (video {s['with_video']}, audio {s['with_audio']}, text {s['with_text']})")
    click.echo(f"  languages  {_counts(s['languages'])}")
    click.echo(f"  labels     {_counts(s['labels'])}")
    click.echo(f"  splits     {_counts(s['splits'])}")
    click.echo(f"  media      {_size(s['media_bytes'])}")


def register(group: click.Group) -> None:
    group.add_command(manifest_group)
