"""What an extraction run did: per-feature counts and where the time went."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FeatureStats:
    spec_id: str = ""
    planned: int = 0
    done: int = 0
    failed: int = 0
    absent: int = 0
    skipped: int = 0
    load_s: float = 0.0
    model_s: float = 0.0
    write_s: float = 0.0


@dataclass
class RunSummary:
    dataset: str
    clips: int
    features: dict[str, FeatureStats] = field(default_factory=dict)
    decoded: int = 0
    decode_s: float = 0.0       # decoder processes' own time
    decode_wait_s: float = 0.0  # time the model side waited for decoded clips
    finalize_s: float = 0.0
    wall_s: float = 0.0
    decoder_restarts: int = 0
    missing_media: int = 0      # manifest rows whose media file is missing (ledger kind 'missing')
    notes: list[str] = field(default_factory=list)  # one line each, e.g. a spec kept from before a default changed

    @property
    def processed(self) -> int:
        """Clips that went through at least one extractor (or failed there)."""
        return max((s.done + s.failed + s.absent for s in self.features.values()), default=0)

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def models_loaded(self) -> int:
        return sum(1 for s in self.features.values() if s.load_s > 0)

    def format(self) -> str:
        lines = [f"{'feature':<14}{'spec':<14}{'done':>6}{'failed':>8}{'absent':>8}{'skipped':>9}"
                 f"{'load s':>8}{'model s':>9}{'write s':>9}"]
        for name, s in self.features.items():
            lines.append(f"{name:<14}{s.spec_id:<14}{s.done:>6}{s.failed:>8}{s.absent:>8}{s.skipped:>9}"
                         f"{s.load_s:>8.2f}{s.model_s:>9.2f}{s.write_s:>9.2f}")
        lines.append(
            f"{self.clips} clips in manifest, {self.processed} processed in {self.wall_s:.1f}s "
            f"({self.clips_per_s:.2f} clips/s); decode {self.decode_s:.1f}s in decoders "
            f"({self.decoded} clips, {self.decode_wait_s:.1f}s waited), finalize {self.finalize_s:.1f}s"
            + (f"; decoder restarted {self.decoder_restarts}x" if self.decoder_restarts else "")
        )
        if self.missing_media:
            lines.append(f"{self.missing_media} clip(s) have no media file (ledger kind 'missing', counted as failed; "
                         "a file that appears later is extracted on the next run)")
        lines.extend(self.notes)
        return "\n".join(lines)
