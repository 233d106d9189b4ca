"""`clmer-features status | verify | gc | compact`: inspect and maintain a store."""
from __future__ import annotations

import sys

import click
import polars as pl

from clmer_features.manifest import read_manifest
from clmer_features.store import DEFAULT_CACHE, open_store
from clmer_features.store import layout as L
from clmer_features.store.objpath import cache_root, is_object
from clmer_features.spec import FeatureSpec
from clmer_features.store.maintenance import gc as gc_store
from clmer_features.store.maintenance import superseded_specs
from clmer_features.store.maintenance import status as store_status
from clmer_features.store.maintenance import repair as repair_store
from clmer_features.store.maintenance import verify as verify_store

cache_option = click.option(
    "--cache", "cache_dir", default=DEFAULT_CACHE, show_default=True, envvar="CLMER_CACHE",
    type=click.Path(file_okay=False), help="Cache root (holds one folder per dataset).",
)


def _datasets(cache_dir: str, dataset: str | None) -> list[str]:
    if dataset:
        return [dataset]
    root = cache_root(cache_dir)
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
    shown = pl.DataFrame([(r.feature, r.spec_id) for r in rows], schema=["feature", "spec_id"], orient="row")
    fails = (store.ledger().filter(pl.col("kind").is_in(["error", "missing"])
                                   & pl.col("clip_id").is_in(m.df["clip_id"].implode()))
             .join(shown, on=["feature", "spec_id"], how="semi"))
    for row in fails.head(5).iter_rows(named=True):
        click.echo(f"  failed: {row['feature']}/{row['spec_id']} {row['clip_id']}: {row['stage']}: {row['error']}: "
                   f"{row['message'][:120]}")
    if fails.height > 5:
        click.echo(f"  ... {fails.height - 5} more failures in {store.root / 'ledger.parquet'}")


progress_option = click.option("--no-progress", is_flag=True,
                               help="No progress bar (there is none anyway when stderr is not a terminal).")


def show_progress(no_progress: bool) -> bool:
    """Progress bars only for a person watching: stderr is a terminal and --no-progress not given."""
    return not no_progress and sys.stderr.isatty()


@click.command("verify", epilog="""\b
Exit status:
  0 clean       every part sound, every index entry on disk, nothing left to do
  3 unfinished  a run is in progress or was interrupted (parts not indexed yet,
                clips of the manifest not extracted): rerun extract to complete
  4 corrupt     data damaged or gone (checksum, size, missing part or file, index
                rows outside their part): run `verify --repair`, then rerun extract
  (2: a usage error; with several datasets, the worst outcome wins)""")
@cache_option
@click.option("--dataset", help="Only this dataset (default: every store under --cache).")
@click.option("--repair", is_flag=True,
              help="Delete damaged parts and rebuild the affected indexes; a rerun of extract then recomputes "
                   "exactly the clips they held.")
@progress_option
def verify_cmd(cache_dir: str, dataset: str | None, repair: bool, no_progress: bool) -> None:
    """Check every part's checksums and every index entry against what is on disk.

    Tells three outcomes apart (see the exit status below): clean, unfinished (a
    plain rerun of extract completes it) and corrupt (something on disk is damaged
    or gone; --repair drops it so that a rerun recomputes it).
    """
    worst = 0
    for name in _datasets(cache_dir, dataset):
        store = open_store(cache_dir, name)
        rep = verify_store(store, progress=show_progress(no_progress))
        for p in rep.corrupt:
            click.echo(f"{name}: corrupt: {p}")
        for p in rep.unfinished:
            click.echo(f"{name}: unfinished: {p}")
        if repair and rep.corrupt:
            for line in repair_store(store, rep):
                click.echo(f"{name}: repair: {line}")
            rep = verify_store(store, progress=show_progress(no_progress))
            for p in rep.problems:
                click.echo(f"{name}: after repair: {p}")
        advice = {"clean": "OK", "unfinished": "unfinished: rerun extract to complete it",
                  "corrupt": "corrupt: run `clmer-features verify --repair`, then rerun extract"}[rep.state]
        click.echo(f"{name}: {rep.checked_parts} parts, {rep.checked_files} files checked, "
                   f"{len(rep.problems)} finding(s): {advice}")
        worst = max(worst, rep.exit_code)
    if worst:
        raise SystemExit(worst)


def _is_default(spec: FeatureSpec) -> bool | None:
    """Whether ``spec`` was made with its extractor's default model and parameters (None: unknown)."""
    import dataclasses
    import inspect

    from clmer_features.extractors import available
    from clmer_features.extractors.base import get_extractor

    name = spec.extractor if spec.extractor in available() else spec.feature
    if name not in available():
        return None
    cls = get_extractor(name)
    if getattr(cls, "default_model", "") and spec.model_id and spec.model_id != cls.default_model:
        return False
    config = getattr(cls, "Config", None)
    if config is not None and dataclasses.is_dataclass(config):
        defaults = {f.name: f.default for f in dataclasses.fields(config)
                    if f.metadata.get("spec", True) and f.default is not dataclasses.MISSING}
    else:
        defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                    if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}
    params = spec.params
    shared = [k for k in defaults if k in params]
    return all(params[k] == defaults[k] for k in shared)


def _keep_option(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        feature, sep, spec_id = v.partition("=")
        if not sep or not feature.strip() or not spec_id.strip():
            raise click.BadParameter(f"{v!r}: expected FEATURE=SPEC_ID, e.g. siglip=e3c86f4bc1cd", param_hint="--keep")
        out[feature.strip()] = spec_id.strip()
    return out


@click.command("gc")
@cache_option
@click.option("--dataset", help="Only this dataset (default: every store under --cache).")
@click.option("--older-than", default=3600.0, show_default=True, type=float,
              help="Remove temporary parts untouched for this many seconds (a running writer's parts survive).")
@click.option("--superseded", is_flag=True,
              help="Also remove other specs of a feature: all but the one named with --keep or, without it, "
                   "all but the spec(s) with the extractor's default parameters. Lists them; deletes with --yes.")
@click.option("--keep", multiple=True, metavar="FEATURE=SPEC_ID",
              help="With --superseded: the spec of FEATURE to keep (repeatable).")
@click.option("--yes", is_flag=True, help="With --superseded: really delete the specs listed.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def gc_cmd(cache_dir: str, dataset: str | None, older_than: float, superseded: bool, keep: tuple[str, ...],
           yes: bool, dry_run: bool) -> None:
    """Remove abandoned temporary parts and expired leases; superseded specs only when asked.

    \b
    Specs hold computed features, so `--superseded` first only lists what it
    would delete and what it keeps; run it again with `--yes` to delete. It
    keeps the spec named with `--keep FEATURE=SPEC_ID`, else the spec(s) with
    the extractor's default parameters, never merely the newest; a feature where
    neither decides, and a spec not finalized yet, is left alone.
    \b
    Example:
      clmer-features gc --cache cache --superseded --keep siglip=e3c86f4bc1cd
      clmer-features gc --cache cache --superseded --keep siglip=e3c86f4bc1cd --yes
    """
    if (keep or yes) and not superseded:
        raise click.UsageError("--keep and --yes go with --superseded")
    keeps = _keep_option(keep)
    verb = "would remove" if dry_run else "removed"
    for name in _datasets(cache_dir, dataset):
        store = open_store(cache_dir, name)
        rep = gc_store(store, older_than_s=older_than, superseded=superseded and yes, dry_run=dry_run,
                       keep=keeps, is_default=_is_default)
        if superseded and not yes:
            rep.superseded, rep.undecided = superseded_specs(store, keeps, _is_default)
        for p in rep.removed_tmp + rep.removed_leases:
            click.echo(f"{name}: {verb} {p}")
        for line in rep.undecided:
            click.echo(f"{name}: left alone: {line}")
        spec_verb = "removed" if superseded and yes and not dry_run else "would remove"
        for path, why in rep.superseded:
            click.echo(f"{name}: {spec_verb} spec {path.parent.name}/{path.name}; {why}")
        click.echo(f"{name}: {verb} {len(rep.removed_tmp)} temporary part(s), {len(rep.removed_leases)} expired "
                   f"lease(s); kept {len(rep.kept_tmp)} recent temporary part(s)"
                   + (f"; {spec_verb} {len(rep.superseded)} superseded spec(s)" if superseded else ""))
        if superseded and not yes and rep.superseded:
            click.echo(f"{name}: nothing deleted yet: run again with --yes to delete the spec(s) listed")


@click.command("compact")
@cache_option
@click.option("--dataset", help="Only this dataset (default: every store under --cache).")
def compact_cmd(cache_dir: str, dataset: str | None) -> None:
    """Merge the small parts of every finalized feature into larger ones, as finalize does.

    Extract finalizes, and so compacts, every feature it adds parts to; this is
    for a cache finalized before finalize merged parts. Values are read
    checked and rewritten; nothing is recomputed. The merged-away parts are
    moved aside for readers already open and removed by `gc` (or the next
    finalize, ten minutes on). Local caches only.
    """
    from clmer_features.store.writer import finalize_feature

    for name in _datasets(cache_dir, dataset):
        store = open_store(cache_dir, name)
        if is_object(store.root):
            raise click.ClickException(f"{store.root}: compact works on a local cache only")
        for s in store.specs():
            if not s.complete:
                click.echo(f"{name}: {s.feature}/{s.spec_id}: not finalized, left alone (rerun extract)")
                continue
            before = len(L.read_json(s.path / L.COMPLETE_FILE).get("part_names") or [])
            after = finalize_feature(store.root, s.feature, s.spec_id).parts
            click.echo(f"{name}: {s.feature}/{s.spec_id}: {before} part(s) -> {after}")


def register(group: click.Group) -> None:
    for cmd in (status_cmd, verify_cmd, gc_cmd, compact_cmd):
        group.add_command(cmd)
