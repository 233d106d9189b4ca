"""Status, verification and garbage collection of a store."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import zarr
from tqdm import tqdm

from clmer_features.store import Store
from clmer_features.store import layout as L


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
        done_keys = set(pl.read_parquet(idx_path, columns=["clip_key"])["clip_key"].to_list()) if idx_path.exists() else set()
        fails = pl.read_parquet(fails_path) if fails_path.exists() else L.empty_ledger()
        input_ = zarr.open_group(s.path, mode="r").attrs.get("input", "media")
        keys = store.current_keys(input_) if clips is None else Store(store.root, clips).current_keys(input_)
        if keys is None:
            wanted = done_keys | set(fails["clip_key"].to_list())
        else:
            wanted = set(keys["clip_key"].to_list())
        failed = fails.filter(pl.col("clip_key").is_in(list(wanted)))
        n_err = int((failed["kind"] == "error").sum())
        n_abs = int((failed["kind"] == "absent").sum())
        done = len(wanted & done_keys)
        finalized_parts = L.read_json(s.path / L.COMPLETE_FILE)["parts"] if s.complete else 0
        parts = L.committed_parts(s.path)
        out.append(
            FeatureStatus(
                feature=s.feature,
                spec_id=s.spec_id,
                complete=s.complete,
                done=done,
                missing=len(wanted) - done - n_err - n_abs,
                failed=n_err,
                absent=n_abs,
                pending_parts=max(0, len(parts) - finalized_parts),
            )
        )
    return out


@dataclass
class VerifyReport:
    checked_parts: int = 0
    checked_files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: Store, progress: bool = False) -> VerifyReport:
    """Recompute every part's file checksums and each index's digest.

    Catches a flipped byte, a truncated or missing chunk file, an extra file,
    and an index that no longer matches its completion marker.
    """
    rep = VerifyReport()
    for s in store.specs():
        where = f"{s.feature}/{s.spec_id}"
        if s.complete:
            complete = L.read_json(s.path / L.COMPLETE_FILE)
            idx = s.path / L.INDEX_FILE
            if not idx.exists():
                rep.problems.append(f"{where}: {L.INDEX_FILE} is missing")
            elif L.sha256_file(idx) != complete.get("index_sha256"):
                rep.problems.append(f"{where}: {L.INDEX_FILE} does not match {L.COMPLETE_FILE} (rerun extract to refinalize)")
        else:
            rep.problems.append(f"{where}: not finalized (no {L.COMPLETE_FILE})")
        parts = L.committed_parts(s.path)
        for part in tqdm(parts, desc=f"verify {where}", unit="part", disable=not progress, leave=False):
            rep.checked_parts += 1
            meta_path = part / L.PART_FILE
            if not meta_path.exists():
                rep.problems.append(f"{where}: part {part.name}: {L.PART_FILE} is missing")
                continue
            expected: dict[str, dict] = L.read_json(meta_path)["files"]
            actual = {p.relative_to(part).as_posix() for p in part.rglob("*") if p.is_file()} - {L.PART_FILE}
            for rel in sorted(set(expected) - actual):
                rep.problems.append(f"{where}: part {part.name}: file {rel} is missing")
            for rel in sorted(actual - set(expected)):
                rep.problems.append(f"{where}: part {part.name}: unexpected file {rel}")
            for rel in sorted(set(expected) & actual):
                rep.checked_files += 1
                size = (part / rel).stat().st_size
                if size != expected[rel]["size"]:
                    rep.problems.append(f"{where}: part {part.name}: {rel} is corrupt (truncated or grown: {size} bytes, expected {expected[rel]['size']})")
                elif L.crc32_file(part / rel) != expected[rel]["crc32"]:
                    rep.problems.append(f"{where}: part {part.name}: {rel} is corrupt (checksum mismatch, {size} bytes)")
    return rep


@dataclass
class GcReport:
    removed_tmp: list[Path] = field(default_factory=list)
    removed_specs: list[Path] = field(default_factory=list)
    kept_tmp: list[Path] = field(default_factory=list)


def gc(store: Store, *, older_than_s: float = 3600.0, superseded: bool = False, dry_run: bool = False) -> GcReport:
    """Remove abandoned temporary parts (older than ``older_than_s``, so a running
    writer's part survives) and, only when asked, specs superseded by a newer
    finalized spec of the same feature."""
    rep = GcReport()
    now = time.time()
    for s in store.specs():
        for tmp in (s.path / L.PARTS_DIR).glob(f"{L.TMP_PREFIX}*"):
            if now - tmp.stat().st_mtime >= older_than_s:
                rep.removed_tmp.append(tmp)
                if not dry_run:
                    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
            else:
                rep.kept_tmp.append(tmp)
    if superseded:
        by_feature: dict[str, list] = {}
        for s in store.specs():
            by_feature.setdefault(s.feature, []).append(s)
        for feature, specs in by_feature.items():
            finalized = [s for s in specs if s.complete]
            if not finalized:
                continue
            newest = max(finalized, key=lambda s: s.finalized_ns)
            for s in specs:
                if s is not newest and s.complete:
                    rep.removed_specs.append(s.path)
                    if not dry_run:
                        shutil.rmtree(s.path)
        if rep.removed_specs and not dry_run:
            ledger = store.ledger()
            gone = {p.name for p in rep.removed_specs}
            L.atomic_write_parquet(store.root / L.LEDGER_FILE, ledger.filter(~pl.col("spec_id").is_in(list(gone))))
    return rep
