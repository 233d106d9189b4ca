"""Status, verification and garbage collection of a store."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import polars as pl
from tqdm import tqdm

from clmer_features.errors import ClmerError
from clmer_features.spec import FeatureSpec
from clmer_features.store import Store
from clmer_features.store import layout as L
from clmer_features.store.lease import open_leases
from clmer_features.store.objpath import StorePath, is_object


@dataclass
class FeatureStatus:
    feature: str
    spec_id: str
    complete: bool
    done: int
    missing: int
    failed: int
    absent: int
    pending_parts: int  # committed after the last finalize (a run in progress or crashed)

    def row(self) -> dict:
        return self.__dict__.copy()


def status(store: Store, clips: pl.DataFrame | None = None) -> list[FeatureStatus]:
    """Per stored spec: clips done / missing / failed / absent, for ``clips`` (a manifest's
    ``df``) or else the store's manifest snapshot."""
    out: list[FeatureStatus] = []
    for s in store.specs():
        idx_path = s.path / L.INDEX_FILE
        fails_path = s.path / L.FAILURES_FILE
        done_keys = set(L.read_parquet(idx_path, columns=["clip_key"])["clip_key"].to_list()) if idx_path.exists() else set()
        fails = L.read_parquet(fails_path) if fails_path.exists() else L.empty_ledger()
        input_ = L.node_attrs(s.path).get("input", "media")
        keys = (store if clips is None else Store(store.root, clips)).current_keys(input_)
        if keys is None:
            wanted = done_keys | set(fails["clip_key"].to_list())
        else:
            wanted = set(keys["clip_key"].to_list())
        failed = fails.filter(pl.col("clip_key").is_in(list(wanted)))
        n_err = int(failed["kind"].is_in(["error", "missing"]).sum())  # missing media counts as failed, as in extract
        n_abs = int((failed["kind"] == "absent").sum())
        done = len(wanted & done_keys)
        complete = L.read_json(s.path / L.COMPLETE_FILE) if s.complete else {}
        on_disk = {p.name for p in L.committed_parts(s.path)}
        indexed = complete.get("part_names")
        pending = len(on_disk - set(indexed)) if indexed is not None else max(0, len(on_disk) - complete.get("parts", 0))
        out.append(
            FeatureStatus(
                feature=s.feature,
                spec_id=s.spec_id,
                complete=s.complete,
                done=done,
                missing=len(wanted) - done - n_err - n_abs,
                failed=n_err,
                absent=n_abs,
                pending_parts=pending,
            )
        )
    return out


CLEAN, UNFINISHED, CORRUPT = "clean", "unfinished", "corrupt"
EXIT_CODES = {CLEAN: 0, UNFINISHED: 3, CORRUPT: 4}  # documented in `clmer-features verify --help`


@dataclass
class VerifyReport:
    """What ``verify`` found. ``unfinished``: a plain rerun of extract completes the store (parts
    not yet indexed, an index rewritten without its ``COMPLETE.json``, clips not extracted yet).
    ``corrupt``: data on disk is damaged or gone; ``repair`` drops it, then a rerun recomputes it."""

    checked_parts: int = 0
    checked_files: int = 0
    unfinished: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    damaged_parts: list[StorePath] = field(default_factory=list)  # parts whose own files are damaged
    corrupt_specs: list[StorePath] = field(default_factory=list)  # specs with any corruption (refinalized by repair)

    @property
    def problems(self) -> list[str]:
        return self.corrupt + self.unfinished

    @property
    def state(self) -> str:
        return CORRUPT if self.corrupt else UNFINISHED if self.unfinished else CLEAN

    @property
    def ok(self) -> bool:
        return self.state == CLEAN

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.state]


def _check_part_files(part: StorePath, where: str, rep: VerifyReport) -> dict | None:
    """Sizes and checksums of one part's files; its PART.json when readable."""
    rep.checked_parts += 1
    meta_path = part / L.PART_FILE
    if not meta_path.exists():
        rep.corrupt.append(f"{where}: part {part.name}: {L.PART_FILE} is missing")
        rep.damaged_parts.append(part)
        return None
    try:
        meta = L.read_json(meta_path)
        expected: dict[str, dict] = meta["files"]
    except (ValueError, KeyError, TypeError):
        rep.corrupt.append(f"{where}: part {part.name}: {L.PART_FILE} is unreadable")
        rep.damaged_parts.append(part)
        return None
    bad: list[str] = []
    if is_object(part):  # one listing gives every size
        sizes = {o["path"][len(part.key) + 1:]: int(o["size"]) for o in part.walk()}
    else:
        sizes = {p.relative_to(part).as_posix(): p.stat().st_size for p in part.rglob("*") if p.is_file()}
    sizes.pop(L.PART_FILE, None)
    actual = set(sizes)
    bad += [f"file {rel} is missing" for rel in sorted(set(expected) - actual)]
    bad += [f"unexpected file {rel}" for rel in sorted(actual - set(expected))]
    for rel in sorted(set(expected) & actual):
        rep.checked_files += 1
        why = L.file_mismatch(part / rel, expected[rel], size=sizes[rel])
        if why:
            bad.append(f"{rel} is corrupt ({why})")
    if bad:
        rep.corrupt += [f"{where}: part {part.name}: {b}" for b in bad]
        rep.damaged_parts.append(part)
    return meta


def _check_index(spec_path: StorePath, where: str, metas: dict[str, dict | None], rep: VerifyReport) -> pl.DataFrame | None:
    """Every index entry against the disk: its part exists with a PART.json, and its rows are the
    part's own rows for that clip (inside the part)."""
    idx_path = spec_path / L.INDEX_FILE
    try:
        index = L.read_parquet(idx_path)
    except Exception:  # noqa: BLE001 - any unreadable index is the same finding
        rep.unfinished.append(f"{where}: {L.INDEX_FILE} is missing or unreadable (rerun extract to refinalize)")
        return None
    for (part,), rows in index.group_by(["part"], maintain_order=True):
        if part not in metas:
            rep.corrupt.append(f"{where}: index names part {part}, which is not on disk ({rows.height} clip(s) lost)")
            continue
        meta = metas[part]
        if meta is None:
            continue  # already reported by the part check
        n_rows, n_clips = int(meta.get("rows", 0)), int(meta.get("clips", 0))
        outside = rows.filter((pl.col("row_start") < 0) | (pl.col("row_end") < pl.col("row_start"))
                              | (pl.col("row_end") > n_rows) | (pl.col("item") < 0) | (pl.col("item") >= n_clips))
        if outside.height:
            r = outside.row(0, named=True)
            rep.corrupt.append(f"{where}: clip {r['clip_id']}: index rows {r['row_start']}..{r['row_end']} lie outside "
                               f"part {part} ({n_rows} rows, {n_clips} clips)" + (
                                   f"; {outside.height - 1} more" if outside.height > 1 else ""))
            continue
        own_path = spec_path / L.PARTS_DIR / part / L.INDEX_FILE
        own = L.read_parquet(own_path) if own_path.exists() else rows.clear()
        # the checksums readers check each clip's rows against must be the part's own (format 2)
        cols = ["clip_key", "row_start", "row_end", "item"] + [L.DIGEST] * (L.DIGEST in own.columns and L.DIGEST in rows.columns)
        own = own.select(cols)
        differ = rows.select(cols).join(own, on=cols, how="anti")
        if differ.height:
            rep.corrupt.append(f"{where}: {differ.height} index entr(ies) for part {part} do not match the part's own "
                               f"index (first: {differ['clip_key'][0]})")
    return index


def verify(store: Store, progress: bool = False) -> VerifyReport:
    """Check every spec of ``store`` against what is on disk.

    Per part: PART.json present, every file's size and checksum (xxh3-64; CRC-32 in format 1
    parts): a flipped byte, a truncated or missing chunk file, an extra file. Per index entry:
    the part exists, and the rows and their checksum are the part's own for that clip. Per spec: the index is the one ``COMPLETE.json`` records and
    covers every committed part, and every clip of the manifest snapshot is extracted or failed.
    """
    from clmer_features.store.writer import stale_reason

    rep = VerifyReport()
    for s in store.specs():
        where = f"{s.feature}/{s.spec_id}"
        before = len(rep.corrupt)
        parts = L.committed_parts(s.path)
        metas: dict[str, dict | None] = {}
        for part in tqdm(parts, desc=f"verify {where}", unit="part", disable=not progress, leave=False):
            metas[part.name] = _check_part_files(part, where, rep)
        if not s.complete:
            rep.unfinished.append(f"{where}: not finalized (no {L.COMPLETE_FILE}): an extract is running or was "
                                  "interrupted; rerun it to finish")
        else:
            index = _check_index(s.path, where, metas, rep)
            why = stale_reason(s.path)
            if why is not None and why.startswith("finalized in store format"):
                why = None  # an older format reads as it is: not unfinished (a rerun of extract migrates it)
            if why is not None and "gone from disk" not in why:  # a lost part is reported as corrupt above
                rep.unfinished.append(f"{where}: {why} (rerun extract to refinalize)")
            keys = store.current_keys(L.node_attrs(s.path).get("input", "media"))
            if index is not None and keys is not None and why is None:
                fails = s.path / L.FAILURES_FILE
                seen = pl.concat([index.select("clip_key"), L.read_parquet(fails, columns=["clip_key"])
                                  if fails.exists() else pl.DataFrame(schema={"clip_key": pl.Utf8})])
                missing = keys.join(seen, on="clip_key", how="anti").height
                if missing:
                    rep.unfinished.append(f"{where}: {missing} clip(s) of the manifest snapshot are not extracted "
                                          "yet (rerun extract)")
        if len(rep.corrupt) > before:
            rep.corrupt_specs.append(s.path)
    return rep


def repair(store: Store, report: VerifyReport) -> list[str]:
    """Drop the damaged parts ``report`` found and refinalize every spec with corruption, so that
    the index holds only sound data and a rerun of extract recomputes exactly the dropped clips.
    Returns one line per action."""
    from clmer_features.store.writer import finalize_feature

    done: list[str] = []
    for part in report.damaged_parts:
        if not part.exists():
            continue
        L.remove_tree(part, marker=L.PART_FILE)  # out of sight at once; then deleted
        done.append(f"{part.parent.parent.parent.name}/{part.parent.parent.name}: dropped part {part.name}")
    for spec_path in report.corrupt_specs:
        feature, spec_id = spec_path.parent.name, spec_path.name
        summary = finalize_feature(store.root, feature, spec_id)
        done.append(f"{feature}/{spec_id}: refinalized ({summary.clips} clips in {summary.parts} parts)")
    return done


@dataclass
class GcReport:
    removed_tmp: list[StorePath] = field(default_factory=list)  # object stores: unmarked parts
    removed_specs: list[StorePath] = field(default_factory=list)
    kept_tmp: list[StorePath] = field(default_factory=list)
    removed_leases: list[StorePath] = field(default_factory=list)
    superseded: list[tuple[StorePath, str]] = field(default_factory=list)  # (spec removed or to remove, what is kept)
    undecided: list[str] = field(default_factory=list)  # features left alone, and why


def superseded_specs(store: Store, keep: Mapping[str, str] | None = None,
                     is_default: Callable[[FeatureSpec], bool | None] | None = None
                     ) -> tuple[list[tuple[Path, str]], list[str]]:
    """Specs that ``gc --superseded`` removes: of each feature with several specs, every finalized
    spec but the one the user names in ``keep`` ({feature: spec_id}) or, without a name, but those
    with the extractor's default parameters (``is_default``). A feature where neither decides,
    and every spec not finalized (a run may be writing it), is left alone."""
    keep = dict(keep or {})
    by_feature: dict[str, list] = {}
    for s in store.specs():
        by_feature.setdefault(s.feature, []).append(s)
    unknown = sorted(set(keep) - set(by_feature))
    if unknown:
        raise ClmerError(f"--keep names feature(s) not in {store.root}: {', '.join(unknown)} "
                         f"(features: {', '.join(sorted(by_feature)) or 'none'})")
    out: list[tuple[Path, str]] = []
    undecided: list[str] = []
    for feature, specs in sorted(by_feature.items()):
        listing = ", ".join(f"{s.spec_id} ({s.spec.describe()})" for s in specs)
        if feature in keep:
            keepers = [s for s in specs if s.spec_id == keep[feature]]
            if not keepers:
                raise ClmerError(f"--keep {feature}={keep[feature]}: no such spec; stored: {listing}")
            why = f"keeping {feature}/{keep[feature]} (named with --keep)"
        elif len(specs) < 2:
            continue
        else:
            verdicts = [is_default(s.spec) if is_default else None for s in specs]
            keepers = [s for s, v in zip(specs, verdicts) if v]
            if not keepers:
                undecided.append(f"{feature}: {len(specs)} specs, none with the default parameters; name the one to "
                                 f"keep with --keep {feature}=SPEC_ID ({listing})")
                continue
            why = "keeping " + ", ".join(f"{feature}/{s.spec_id}" for s in keepers) + " (default parameters)"
        for s in specs:
            if s in keepers:
                continue
            if not s.complete:
                undecided.append(f"{feature}/{s.spec_id}: not finalized (a run may be writing it); left alone")
                continue
            out.append((s.path, why))
    return out, undecided


def gc(store: Store, *, older_than_s: float = 3600.0, superseded: bool = False, dry_run: bool = False,
       keep: Mapping[str, str] | None = None, is_default: Callable[[FeatureSpec], bool | None] | None = None
       ) -> GcReport:
    """Remove abandoned temporary parts (older than ``older_than_s``, so a running writer's part
    survives; on an object store, parts without their marker whose newest object is that old)
    and expired leases and, only when asked, superseded specs (see :func:`superseded_specs`)."""
    rep = GcReport()
    now = time.time()
    for s in store.specs():
        if is_object(s.path):
            for name, newest in sorted(L.object_parts(s.path)[1].items()):
                tmp = s.path / L.PARTS_DIR / name
                if now - newest >= older_than_s:
                    rep.removed_tmp.append(tmp)
                    if not dry_run:
                        tmp.delete_tree()
                else:
                    rep.kept_tmp.append(tmp)
            continue
        for tmp in (s.path / L.PARTS_DIR).glob(f"{L.TMP_PREFIX}*"):
            if now - tmp.stat().st_mtime >= older_than_s:
                rep.removed_tmp.append(tmp)
                if not dry_run:
                    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
            else:
                rep.kept_tmp.append(tmp)
    leases = open_leases(store.root)
    for path in sorted(p for p in leases.dir.glob("*.json")) if leases.dir.is_dir() else []:
        if leases.expired(path):  # its owner died: a later run would take it over anyway
            rep.removed_leases.append(path)
            if not dry_run:
                path.unlink(missing_ok=True)
    if superseded:
        rep.superseded, rep.undecided = superseded_specs(store, keep, is_default)
        if not dry_run:
            for path, _ in rep.superseded:
                if is_object(path):
                    (path / L.COMPLETE_FILE).unlink(missing_ok=True)  # gone for readers at once
                L.remove_tree(path, marker=L.ZARR_JSON)
                rep.removed_specs.append(path)
            if rep.removed_specs:
                from clmer_features.store.writer import store_lock, update_ledger

                gone = [p.name for p in rep.removed_specs]
                with store_lock(store.root):
                    update_ledger(store.root, lambda old: old.filter(~pl.col("spec_id").is_in(gone)))
    return rep
