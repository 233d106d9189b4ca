"""`clmer-features manifest from`, `import`, `export`: datasets and features from elsewhere."""
from __future__ import annotations

import click

from clmer_features.cli.store_cmds import progress_option, show_progress
from clmer_features.interop import FORMATS, export_features, import_features
from clmer_features.recipes import available, build_manifest, get_recipe, layout
from clmer_features.store import DEFAULT_CACHE

cache_option = click.option(
    "--cache", "cache_dir", default=DEFAULT_CACHE, show_default=True, envvar="CLMER_CACHE",
    type=click.Path(file_okay=False), help="Cache root (holds one folder per dataset).",
)


def _options(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint="--option")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _recipe_help() -> str:
    """Per dataset: the folder layout under ROOT it expects and its --option keys."""
    blocks = ["Datasets: the folder layout each expects under ROOT, and its --option keys."]
    for name in available():
        recipe = get_recipe(name)
        opts = "; ".join(f"{k}: {v}" for k, v in recipe.OPTIONS.items()) or "none"
        blocks.append("\b\n" + "\n".join([f"{name}", *layout(recipe), f"  options: {opts}"]))
    return "\n\n".join(blocks)


@click.command("from", epilog=_recipe_help())
@click.argument("dataset", type=click.Choice(available(), case_sensitive=False))
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Manifest to write: .csv or .parquet. A problem report goes beside it (<out>.report.txt).")
@click.option("--keep-missing", is_flag=True,
              help="Keep rows whose media file is missing (media column empty, expected path in 'missing_media') "
                   "instead of dropping them; both ways they are listed in the report.")
@click.option("--relative", is_flag=True, help="Write media paths relative to the manifest's folder (portable).")
@click.option("--strict", is_flag=True, help="Fail (and write no manifest) if any label row had to be dropped.")
@click.option("--option", "-O", "opts", multiple=True, metavar="KEY=VALUE", help="Dataset-specific option (see below).")
def manifest_from(dataset: str, root: str, out: str, keep_missing: bool, relative: bool, strict: bool,
                  opts: tuple[str, ...]) -> None:
    """Build a manifest from DATASET's official label files under ROOT.

    \b
    Example:
      clmer-features manifest from meld /data/MELD.Raw -o manifests/meld.csv
      clmer-features manifest check manifests/meld.csv
    """
    result = build_manifest(dataset, root, out, keep_missing=keep_missing, options=_options(opts),
                            relative=relative, strict=strict)
    click.echo(result.report.summary())
    click.echo(f"wrote {out} ({result.report.rows_written} clips); report: {out}.report.txt")


@click.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice((*FORMATS, "openface")))
@click.argument("source", type=click.Path(exists=True))
@click.option("-m", "--manifest", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Manifest of the clips (ids are matched to it; its cache keys are used).")
@click.option("-f", "--feature", help="Store feature name to create, e.g. openface (openface: always faces).")
@cache_option
@click.option("--dataset", help="Dataset name (store folder); default: the manifest file's stem.")
@click.option("--key", help="HDF5: group to read; MMSA: modality array to read (audio, vision, text).")
@click.option("--allow-pickle", is_flag=True, help="Allow unpickling an MMSA file. Unpickling runs code: trusted files only.")
@click.option("--model-id", default="", help="Model that made the features, recorded in the spec.")
@click.option("--input", "input_", type=click.Choice(["media", "text"]), default=None,
              help="Which cache key the feature follows (default: media when the manifest has media, else text).")
@click.option("--size", type=click.IntRange(min=16), default=None,
              help="openface from CSVs only: side of the crops aligned from the videos (default 112, as faces).")
@click.option("--padding", type=click.FloatRange(min=0.0), default=None,
              help="openface from CSVs only: margin around the aligned face (default 0.25, as faces).")
def import_cmd(fmt: str, source: str, manifest: str, feature: str | None, cache_dir: str, dataset: str | None,
               key: str | None, allow_pickle: bool, model_id: str, input_: str | None, size: int | None,
               padding: float | None) -> None:
    """Import features from SOURCE (a .npy folder, an HDF5 file or an MMSA pickle) into the store.

    `openface` imports OpenFace's outputs as the `faces` feature: SOURCE holds one folder
    per clip id with MERTools' `<clip>.npy` (the aligned faces, BGR) and optionally OpenFace's
    `<clip>.csv` (times, 68 landmarks, confidence); or only OpenFace's CSVs (`<clip>.csv` or
    `<clip>/<clip>.csv`): the crops are then aligned from the manifest's videos by the CSV's
    landmarks, as the faces feature aligns (--size, --padding). Vision features then read them
    with `--param clip.input=faces`.

    \b
    Example:
      clmer-features import npy feats/openface -m clips.csv -f openface
      clmer-features import mmsa unaligned_39.pkl -m mosei.csv -f covarep --key audio --allow-pickle
      clmer-features import openface features/openface_face -m clips.csv
    """
    if fmt == "openface":
        from clmer_features.interop.openface import import_openface

        if feature not in (None, "faces"):
            raise click.UsageError("openface imports the faces feature; leave out -f or give -f faces")
        click.echo(import_openface(source, manifest, cache_dir=cache_dir, dataset=dataset, size=size,
                                   padding=padding).text())
        return
    if size is not None or padding is not None:
        raise click.UsageError("--size and --padding are for `import openface` from CSVs only")
    if not feature:
        raise click.UsageError("give the feature to create: -f NAME")
    summary = import_features(fmt, source, manifest, feature, cache_dir=cache_dir, dataset=dataset, key=key,
                              allow_pickle=allow_pickle, model_id=model_id, input=input_)
    click.echo(summary.text())


@click.command("export")
@click.argument("feature")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS), help="Layout to write.")
@click.option("-o", "--out", required=True, type=click.Path(), help="Folder (npy) or file (hdf5, mmsa) to write.")
@click.option("--dataset", required=True, help="Dataset name (store folder).")
@cache_option
@click.option("--spec-id", help="Which spec of FEATURE (needed when several are stored).")
@click.option("--key", help="HDF5: group to write into; MMSA: array name (default: the feature name).")
@click.option("--h5-layout", type=click.Choice(["packed", "per-clip"]), default="packed", show_default=True,
              help="HDF5: one values array with offsets, or one dataset per clip.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@progress_option
def export_cmd(feature: str, fmt: str, out: str, dataset: str, cache_dir: str, spec_id: str | None,
               key: str | None, h5_layout: str, overwrite: bool, no_progress: bool) -> None:
    """Export a finalized FEATURE of a store to a .npy folder, an HDF5 file or an MMSA pickle."""
    summary = export_features(feature, fmt, out, dataset=dataset, cache_dir=cache_dir, spec_id=spec_id, key=key,
                              h5_layout=h5_layout, overwrite=overwrite, progress=show_progress(no_progress))
    click.echo(summary.text())


def register(group: click.Group) -> None:
    """Add `manifest from` to the manifest group, and the top-level `import` and `export`."""
    manifest_group = group.commands.get("manifest")
    if isinstance(manifest_group, click.Group):
        manifest_group.add_command(manifest_from)
    else:  # the manifest topic is missing: still offer the recipe command
        group.add_command(click.Group("manifest", commands={"from": manifest_from}))
    group.add_command(import_cmd)
    group.add_command(export_cmd)
