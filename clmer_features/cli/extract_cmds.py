"""`clmer-features extract | export-transcripts | demo`: thin wrappers around the engine."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from clmer_features.errors import ClmerError


def _registered() -> list[str]:
    from clmer_features.extractors import available

    return available()


def _feature_list(value: str) -> list[str]:
    from clmer_features.extractors import available

    names = [v.strip() for v in value.split(",") if v.strip()]
    known = available()
    bad = [n for n in names if n not in known]
    if bad:
        raise click.BadParameter(f"unknown feature(s) {', '.join(bad)}; available: {', '.join(known)}")
    if not names:
        raise click.BadParameter("give at least one feature, e.g. siglip,bert")
    return names


def parse_params(items: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``FEATURE.NAME=VALUE`` strings -> {feature: {name: value}}; each feature's Config checks and
    types the values (:func:`clmer_features.engine.feature_configs`)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        lhs, sep, raw = item.partition("=")
        feature, dot, name = lhs.partition(".")
        if not sep or not dot or not feature or not name:
            raise click.BadParameter(f"{item!r}: expected FEATURE.NAME=VALUE, e.g. siglip.frame_interval=1.0",
                                     param_hint="--param")
        out.setdefault(feature.strip(), {})[name.strip()] = raw.strip()
    return out


@click.command("extract")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--features", "-f", required=True, metavar="A,B,...",
              help=f"Comma-separated features to extract; one or more of: {', '.join(_registered())}.")
@click.option("--cache", "cache_dir", default="cache", show_default=True, type=click.Path(file_okay=False),
              help="Store root; the dataset's store is CACHE/<dataset>.")
@click.option("--models-dir", type=click.Path(file_okay=False),
              help="Folder of models laid out like hub repos, e.g. DIR/google/siglip-base-patch16-224 "
                   "(default: $CLMER_MODELS_DIR); `clmer-features features` lists each feature's folder.")
@click.option("--model", "model", multiple=True, metavar="FEATURE=PATH",
              help="Model folder for one feature (repeatable); wins over --models-dir.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where models run; cuda uses fp16.")
@click.option("--dataset", help="Dataset name (store folder); default: the manifest file's stem.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Clips per model batch (frames/texts of these clips go through together).")
@click.option("--partition-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Clips per part written to the store (the unit of resume).")
@click.option("--decode-workers", type=click.IntRange(min=0), default=None,
              help="Decoder processes (default: CPUs-1, at most 4; 0 decodes in-process).")
@click.option("--param", "param", multiple=True, metavar="FEATURE.NAME=VALUE",
              help="An extractor parameter (repeatable), e.g. siglip.frame_interval=1.0; "
                   "parameters that change the numbers go into the feature spec "
                   "(`clmer-features features` lists them).")
@click.option("--retry-failed", is_flag=True, help="Try clips again that failed in earlier runs.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Run partitions on a local Dask cluster of N worker processes (one model copy each).")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Run partitions on a running Dask cluster, e.g. tcp://head:8786 (same store path on every worker).")
@click.option("--strict", is_flag=True,
              help="Refuse the manifest if any media file is missing (default: those clips go to the "
                   "ledger as kind 'missing' and the run goes on; most files missing is always refused).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract_cmd(manifest: str, features: str, cache_dir: str, models_dir: str | None, model: tuple[str, ...],
                device: str, dataset: str | None, batch_size: int, partition_size: int,
                decode_workers: int | None, param: tuple[str, ...], retry_failed: bool,
                workers: int | None, scheduler: str | None, strict: bool, no_progress: bool) -> None:
    """Extract FEATURES for every clip of MANIFEST that the cache lacks.

    \b
    Each clip is decoded once for all features; a rerun does only what is
    missing (nothing at all on an unchanged manifest). A clip that cannot be
    decoded or encoded goes to the ledger with its reason; the run goes on.
    Nothing is downloaded: models come from --models-dir / --model.
    \b
    Example:
      clmer-features extract clips.csv -f siglip,emotion2vec,asr,bert \\
          --cache cache --models-dir /models
    \b
    On Dask (one task per partition; --workers N starts a local cluster):
      clmer-features extract clips.csv -f siglip,bert --workers 2
      clmer-features extract clips.csv -f siglip --device cuda --scheduler tcp://head:8786
    """
    from clmer_features.engine import extract, feature_configs
    from clmer_features.manifest import read_manifest
    from clmer_features.models import parse_overrides

    names = _feature_list(features)
    configs = feature_configs(names, parse_params(param))  # checked before any cluster starts
    kwargs: dict[str, Any] = {}
    if workers is not None or scheduler is not None:  # Dask: same plan, parts and numbers
        from clmer_features.distributed import extract_distributed as extract  # type: ignore[assignment]

        kwargs = {"workers": workers, "scheduler": scheduler, "log": lambda m: click.echo(m, err=True)}
    m = read_manifest(manifest, dataset=dataset, strict=strict)
    summary = extract(
        m, names, cache_dir, models_dir=models_dir,
        model_overrides=parse_overrides(model), device=device, batch_size=batch_size,
        retry_failed=retry_failed, dataset=dataset, partition_size=partition_size,
        decode_workers=decode_workers, params=configs, progress=not no_progress, **kwargs,
    )
    click.echo(summary.format())
    failed = sum(s.failed for s in summary.features.values())
    if failed:
        click.echo(f"{failed} clip-feature failure(s) in this run; reasons: "
                   f"clmer-features status {manifest} --cache {cache_dir}"
                   + (f" --dataset {dataset}" if dataset else "")
                   + " (rerun with --retry-failed to try them again)")


@click.command("export-transcripts")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--cache", "cache_dir", default="cache", show_default=True, type=click.Path(file_okay=False))
@click.option("--dataset", help="Dataset name (store folder); default: the manifest file's stem.")
@click.option("-o", "--output", default="transcription_results.csv", show_default=True,
              help="CSV to write; a folder gets transcription_results.csv in it; - writes the CSV to stdout.")
def export_transcripts_cmd(manifest: str, cache_dir: str, dataset: str | None, output: str) -> None:
    """Write the ASR transcripts of MANIFEST's clips to a CSV (transcription_results.csv)."""
    import sys

    from clmer_features.manifest import read_manifest
    from clmer_features.store import open_store

    try:
        from clmer_features.extractors.asr import export_transcripts, transcripts_path, transcripts_table
    except ImportError as exc:
        raise ClmerError(f"the asr extractor is not available: {exc}") from None
    m = read_manifest(manifest, dataset=dataset)
    store = open_store(cache_dir, m.dataset)
    store.write_clips(m)
    if output == "-":
        table = transcripts_table(store)
        sys.stdout.write(table.write_csv())
        sys.stdout.flush()
        click.echo(f"wrote {table.height} transcripts to stdout", err=True)
        return
    rows = export_transcripts(store, Path(output))
    click.echo(f"wrote {rows} transcripts to {transcripts_path(output)}")


@click.command("demo")
@click.option("--workdir", default="cache/demo-run", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo media, manifest and cache go.")
@click.option("--clips", type=click.IntRange(min=8, max=200), default=32, show_default=True,
              help="Number of demo clips (half English, half Mandarin).")
@click.option("--models-dir", type=click.Path(file_okay=False),
              help="Real models laid out like hub repos (siglip/emotion2vec); tiny random ones otherwise.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--meld", type=click.Path(file_okay=False), default=None,
              help="MELD folder for English sentences and labels (default: ../shared/data/meld if present).")
def demo_cmd(workdir: str, clips: int, models_dir: str | None, device: str, meld: str | None) -> None:
    """Run the whole pipeline on a small bilingual demo set and print a results table.

    \b
    Makes English and Mandarin clips (espeak-ng speech, ffmpeg video), extracts
    siglip, emotion2vec, asr (real faster-whisper tiny.en for English) and bert
    (real MiniLM), trains a head from the cache and prints its scores.
    """
    from clmer_demo import run_demo

    report = run_demo(Path(workdir), n_clips=clips, models_dir=models_dir, device=device, meld=meld,
                      echo=click.echo)
    click.echo(report)


def register(group: click.Group) -> None:
    """Add extract, export-transcripts and demo to ``group``."""
    group.add_command(extract_cmd)
    group.add_command(export_transcripts_cmd)
    group.add_command(demo_cmd)
