"""`clmer-fusion train` and `clmer-fusion bench`: thin wrappers over clmer_fusion.train / .bench."""
from __future__ import annotations

import json
from pathlib import Path

import click

from clmer_features.errors import ClmerError


def _features(value: str) -> list[str]:
    feats = [f.strip() for f in value.split(",") if f.strip()]
    if not feats:
        raise click.BadParameter("give at least one feature, e.g. --features bert,emotion2vec")
    return feats


@click.command("train")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--cache", required=True, type=click.Path(file_okay=False), help="Store root (cache/<dataset>/...).")
@click.option("--features", required=True, help="Comma-separated store features, one per modality: bert,emotion2vec,siglip")
@click.option("--head", default="mlp", show_default=True,
              type=click.Choice(["linear", "mlp", "late", "attention", "temporal", "unified", "disentangled"]))
@click.option("--target", default="label", show_default=True, type=click.Choice(["label", "label_value"]),
              help="label: classification; label_value: regression (MMSA metrics).")
@click.option("--protocol", default="splits", show_default=True,
              type=click.Choice(["splits", "kfold", "logo", "crosslingual"]))
@click.option("--k", default=5, show_default=True, help="kfold: number of folds (when no 'fold' column).")
@click.option("--group-column", default=None, help="logo: the group column (speaker, session...); "
              "crosslingual: the language column (default language).")
@click.option("--missing", default="drop", show_default=True, type=click.Choice(["drop", "embed"]),
              help="Clips missing a modality: drop them, or use a learned missing embedding.")
@click.option("--pool", default="mean", show_default=True, type=click.Choice(["mean", "max", "model", "attention"]),
              help="Sequence -> utterance pooling (attention: learned, reads frame-level data).")
@click.option("--seed", default=0, show_default=True)
@click.option("--lr", default=None, type=float, help="Learning rate (default 3e-3).")
@click.option("--hidden", default=None, type=int, help="Hidden size (default 128).")
@click.option("--batch-size", default=None, type=int, help="Rows per step (default 1024; 0 = one full batch).")
@click.option("--max-epochs", default=None, type=int)
@click.option("--patience", default=None, type=int, help="Evaluations without validation gain before stopping.")
@click.option("--select", default=None, type=click.Choice(["loss", "war", "uar", "macro_f1", "weighted_f1"]),
              help="Early-stopping criterion on validation (default loss).")
@click.option("--class-weights", is_flag=True, help="Weight the loss by inverse class frequency.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--threads", default=1, show_default=True,
              help="torch CPU threads; small heads are fastest on one (0: torch's default).")
@click.option("--ci", default=0, show_default=True, help="Bootstrap draws for 95% confidence intervals (0: none).")
@click.option("--explain", is_flag=True, help="Also compute exact Shapley values of the modalities.")
@click.option("--shapley-method", default="retrain", show_default=True, type=click.Choice(["retrain", "mask"]))
@click.option("--dataset", default=None, help="Store dataset name (default: the manifest's file stem).")
@click.option("--spec", "specs", multiple=True, metavar="FEATURE=SPEC_ID",
              help="Which spec of a feature to use where the store holds several (repeatable).")
@click.option("--check-fresh", is_flag=True,
              help="Fingerprint the manifest's media and refuse features extracted from media that changed since "
                   "(by default the media are not read at all: the cache and the manifest are enough).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder (default runs/<dataset>/<head>_<features>).")
def train_cmd(manifest, cache, features, head, target, protocol, k, group_column, missing, pool, seed, lr, hidden,
              batch_size, max_epochs, patience, select, class_weights, device, threads, ci, explain,
              shapley_method, dataset, specs, check_fresh, out) -> None:
    """Train a fusion head on cached features and score it.

    Prints a table per fold and evaluation set and writes OUT/metrics.json (per split: war, uar,
    macro_f1, weighted_f1, confusion, ...) and OUT/combined_results.csv (clip_id, label, pred,
    prob_<class>). Same inputs and seed give the same numbers.

    \b
    Example:
      clmer-fusion train meld.csv --cache cache --features bert --head linear
      clmer-fusion train sims.csv --cache cache --features bert,emotion2vec,siglip \\
          --head attention --target label_value --explain
    """
    from clmer_fusion.explain import explain as explain_fn
    from clmer_fusion.fit import TrainConfig
    from clmer_fusion.plots import shapley_bars
    from clmer_fusion.request import Request, load, parse_spec_options
    from clmer_fusion.train import request_level, run

    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    feats = _features(features)
    if explain and len(feats) < 2:
        raise ClmerError("--explain needs at least two features (modalities)")
    proto: dict = {"name": protocol}
    if protocol == "kfold":
        proto["k"] = k
    if protocol == "logo":
        if not group_column:
            raise ClmerError("--protocol logo needs --group-column (e.g. speaker or session)")
        proto["column"] = group_column
    if protocol == "crosslingual" and group_column:
        proto["column"] = group_column
    options = {key: v for key, v in dict(lr=lr, hidden=hidden, batch_size=batch_size, max_epochs=max_epochs,
                                          patience=patience, select=select).items() if v is not None}
    options.update(class_weights=class_weights, device=device)
    cfg = TrainConfig.from_dict({"head": head, "seed": seed, "pool": "attention" if pool == "attention" else "mean",
                                 **options})
    level, store_pool = request_level(head, pool)
    req = Request.create(manifest, cache, feats, spec_ids=parse_spec_options(specs), target=target, level=level,
                         pool=store_pool, missing=missing, dataset=dataset, check_fresh=check_fresh)
    data = load(req)                                   # once, for training and explaining alike
    out_dir = Path(out) if out else Path("runs") / (dataset or Path(manifest).stem) / f"{head}_{'+'.join(feats)}"
    res = run(data, cfg, proto, ci=ci)
    res.save(out_dir)
    click.echo(res.table())
    rep = res.missing_report
    click.echo(f"missing-modality policy {rep.get('policy')}: kept {rep.get('kept')} of {rep.get('clips')} clips "
               f"(missing per modality {rep.get('missing_per_modality')}; no target {rep.get('no_target', 0)})")
    if explain:
        exps = explain_fn(data, res.config, proto, method=shapley_method)
        click.echo(f"explained {len(exps)} evaluation set(s): "
                   + ", ".join(f"{e.fold}/{e.eval_set}" for e in exps))
        for e in exps:
            click.echo("")
            click.echo(e.table())
        (out_dir / "shapley.json").write_text(json.dumps([e.to_dict() for e in exps], indent=2))
        import polars as pl

        pl.concat([e.clip_shapley.select(pl.lit(e.fold).alias("fold"), pl.lit(e.eval_set).alias("set"), pl.all())
                   for e in exps]).write_csv(out_dir / "shapley_clips.csv")
        bars = ({g["group"]: {m: g[m] for m in feats} for g in exps[0].groups.to_dicts()} if len(exps) == 1 else
                {f"{e.fold}/{e.eval_set}": e.metric_shapley for e in exps})
        what = "predicted-class probability" if len(exps) == 1 else exps[0].metric
        shapley_bars(bars, feats, out_dir / "shapley.png", title=f"Shapley on {what} ({head})")
    click.echo(f"wrote {out_dir}/metrics.json and {out_dir}/combined_results.csv")


@click.command("bench")
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--check", "check_record", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Rerun the grid of a record.json and report every metric that differs.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: the config's 'out', else runs/<config name> in the working directory).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bench_cmd(config, check_record, out, quiet) -> None:
    """Run a grid: heads x modality subsets x seeds x protocols, from a YAML config.

    Writes results.parquet/.csv, table.md (mean ± std over seeds), shapley.md/.png,
    confusion_*.png and record.json (config, spec ids, manifest fingerprint, versions, revision).
    `--check RECORD` reruns a recorded grid and exits 1 if any number differs.
    The config format is documented in clmer_fusion/bench.py.
    """
    from clmer_fusion import bench

    if check_record:
        diffs = bench.check(check_record, progress=not quiet)
        if diffs:
            click.echo(f"{len(diffs)} difference(s) against {check_record}:")
            for d in diffs[:50]:
                click.echo(f"  {d}")
            raise SystemExit(1)
        click.echo(f"no differences: every metric in {check_record} reproduced exactly")
        return
    if not config:
        raise ClmerError("give a CONFIG.yaml (or --check RECORD)")
    cfg = bench.load_config(config)
    out_dir = Path(out or cfg["out"])
    cfg["out"] = str(out_dir.resolve())
    res = bench.run_grid(cfg, progress=not quiet)
    paths = bench.write_outputs(res, out_dir)
    click.echo(res.table)
    if res.shapley:
        click.echo("")
        click.echo(bench.shapley_markdown(res.shapley))
    click.echo(f"{res.record['fits']} fits in {res.seconds:.1f} s; wrote {paths['table']}, {paths['parquet']}, "
               f"{paths['record']}")


def register(group: click.Group) -> None:
    """Add `train` and `bench` to the `clmer-fusion` group."""
    group.add_command(train_cmd)
    group.add_command(bench_cmd)
