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
def check(manifest: str, dataset: str | None) -> None:
    """Validate MANIFEST and print a summary (or every problem, with file, row and column)."""
    m = read_manifest(manifest, dataset=dataset)
    s = m.summary()
    click.echo(f"{s['manifest']}: OK, dataset {s['dataset']!r}")
    click.echo(f"  clips      {s['clips']} (video {s['with_video']}, audio {s['with_audio']}, text {s['with_text']})")
    click.echo(f"  languages  {_counts(s['languages'])}")
    click.echo(f"  labels     {_counts(s['labels'])}")
    click.echo(f"  splits     {_counts(s['splits'])}")
    click.echo(f"  media      {_size(s['media_bytes'])}")


def register(group: click.Group) -> None:
    group.add_command(manifest_group)
