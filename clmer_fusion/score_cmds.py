"""`clmer-fusion ov-score`: open-vocabulary scores of any model's answers against a manifest's gold sets."""
from __future__ import annotations

from pathlib import Path

import click

from clmer_features.errors import ClmerError


@click.command("ov-score")
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--pred-column", default="answer", show_default=True,
              help="Column of PREDICTIONS holding each clip's answer (a word, or several: 'happy, excited').")
@click.option("--gold-column", default="openset", show_default=True,
              help="Column of MANIFEST holding the gold emotion set (OV-MER: \"['worried', 'anxious']\").")
@click.option("--synonyms", "synonyms_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help='JSON synonym map replacing the built-in one: {"groups": [[word, ...], ...]} '
                                 'or {"word": "group", ...}.')
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Per-clip CSV [default: PREDICTIONS with suffix .ov.csv].")
@click.option("--show-synonyms", is_flag=True, help="Print the whole synonym map, not only the groups used.")
def ov_score_cmd(predictions: Path, manifest: Path, pred_column: str, gold_column: str,
                 synonyms_file: Path | None, out: Path | None, show_synonyms: bool) -> None:
    """Set-level precision, recall and F1 of predicted emotion sets against gold sets (OV-MER style).

    \b
    PREDICTIONS: a CSV with clip_id and the answer column (from any model; clmer-fusion r1omni
    writes combined_results.csv with an 'answer' column). MANIFEST: its gold column (default
    'openset'); its media are not read. Both sets are split into words (commas, 'and', '/', ...),
    each word replaced by its synonym group; per clip precision = |pred & gold| / |pred|,
    recall = |pred & gold| / |gold|; averages over clips with a gold set, F1 from the averages.
    A clip with a gold set and no prediction scores 0.
    """
    import polars as pl

    from clmer_fusion.r1omni.score import builtin_groups, load_groups, ov_clip, ov_scores
    from clmer_fusion.request import read_labels

    preds = pl.read_csv(predictions, infer_schema=False)
    for col in ("clip_id", pred_column):
        if col not in preds.columns:
            raise ClmerError(f"{predictions}: no column {col!r} (columns: {', '.join(preds.columns)})")
    if preds["clip_id"].is_duplicated().any():
        dup = preds.filter(preds["clip_id"].is_duplicated())["clip_id"][0]
        raise ClmerError(f"{predictions}: clip_id {dup!r} appears more than once")
    gold = read_labels(manifest).df
    if gold_column not in gold.columns:
        raise ClmerError(f"{manifest}: no gold column {gold_column!r} (columns: {', '.join(gold.columns)})")
    groups = load_groups(synonyms_file) if synonyms_file else None
    table = gold.select("clip_id", pl.col(gold_column).cast(pl.Utf8).alias("gold")).filter(
        pl.col("gold").is_not_null()).join(
        preds.select("clip_id", pl.col(pred_column).alias("prediction")), on="clip_id", how="left",
        maintain_order="left")
    unknown = preds.filter(~pl.col("clip_id").is_in(gold["clip_id"].implode()))["clip_id"].to_list()
    rows = []
    for cid, g, a in table.iter_rows():
        c = ov_clip(g, a, groups)
        if c is not None:
            rows.append({"clip_id": cid, "gold": g, "prediction": a, "gold_groups": "; ".join(c["gold_groups"]),
                         "predicted_groups": "; ".join(c["predicted_groups"]),
                         "precision": c["precision"], "recall": c["recall"], "f1": c["f1"]})
    if not rows:
        raise ClmerError(f"{manifest}: no clip has a gold set in {gold_column!r}")
    per = pl.DataFrame(rows)
    out = out or predictions.with_suffix(".ov.csv")
    per.write_csv(out)
    s = ov_scores(per["gold"].to_list(), per["prediction"].to_list(), groups)
    no_pred = per["prediction"].null_count()
    click.echo(f"open-vocabulary scores over {s['n']} clips with a gold set ({gold_column}): "
               f"precision {s['precision']:.4f}  recall {s['recall']:.4f}  F1 {s['f1']:.4f}")
    if no_pred:
        click.echo(f"  {no_pred} clip(s) with a gold set have no prediction (scored 0)")
    if unknown:
        click.echo(f"  {len(unknown)} prediction(s) for clips not in the manifest, ignored: {', '.join(unknown[:5])}")
    mapping = groups if groups is not None else builtin_groups()
    source = str(synonyms_file) if synonyms_file else "built-in (clmer_fusion/r1omni/data/ovmer_groups.json + synonyms.json)"
    used = {w for col in ("gold_groups", "predicted_groups") for v in per[col].to_list() for w in v.split("; ") if w}
    members: dict[str, list[str]] = {}
    for word, group in sorted(mapping.items()):
        if show_synonyms or group in used:
            members.setdefault(group, []).append(word)
    click.echo(f"synonym map: {source}; {'all groups' if show_synonyms else 'groups met here'}:")
    for group, words in sorted(members.items()):
        click.echo(f"  {group}: {', '.join(w for w in words if w != group) or '(itself only)'}")
    click.echo(f"per clip: {out}")


def register(group: click.Group) -> None:
    """Add ``ov-score`` to ``group``."""
    group.add_command(ov_score_cmd)
