"""Where a text feature's text comes from: the manifest's ``text``, else the clip's ``asr`` transcript.

Shared by every text feature (bert, the text family's presets, sbert) so that they all
read the same text for a clip and record it the same way in their spec's ``text_source``:
``"manifest"`` when every row of the store's manifest snapshot has its text (or no asr spec
was handed over), else ``"manifest|asr:<asr spec_id>"`` (transcripts of that exact ASR spec).
A row with neither is recorded as absent text. The clips are filed under their text key,
else their media key (``store.layout.KEY_COLUMNS["text"]``).
"""
from __future__ import annotations

from typing import Any

from clmer_features.errors import StoreError
from clmer_features.extractors.base import ClipOutput, DecodedClip, RunInputs


def _has_text(row: dict[str, Any]) -> bool:
    t = row.get("text")
    return isinstance(t, str) and bool(t.strip())


class TextFromManifestOrAsr:
    """Where a text feature's text comes from: the manifest's ``text``, else the asr transcript.

    ``text_source`` (for the spec) is ``"manifest"`` when every row of the store's manifest
    snapshot has text or no asr spec was handed over, else ``"manifest|asr:<asr spec_id>"``.
    """

    requires = ("asr",)
    text_source = "manifest"
    _inputs: RunInputs | None = None
    _transcripts: dict[str, str] | None = None

    def bind(self, inputs: RunInputs) -> None:
        self._inputs, self._transcripts = inputs, None
        clips = inputs.store().clips()
        rows = clips.select("text").to_dicts() if clips is not None and "text" in clips.columns else []
        asr = inputs.spec_of("asr")
        self.text_source = "manifest" if asr is None or all(_has_text(r) for r in rows) \
            else f"manifest|asr:{asr.spec_id}"

    @property
    def uses_asr(self) -> bool:
        return "asr:" in self.text_source

    @property
    def transcripts(self) -> dict[str, str]:
        """media clip key -> transcript of the bound asr spec, read from the store once per bind."""
        if self._transcripts is None:
            self._transcripts = {}
            spec = self._inputs.spec_of("asr") if (self._inputs is not None and self.uses_asr) else None
            if spec is not None:
                try:
                    rec = self._inputs.store().feature("asr", spec=spec).records()
                except StoreError:
                    rec = None
                if rec is not None and "text" in rec.columns:
                    self._transcripts = {k: (t or "") for k, t in rec.select("clip_key", "text").iter_rows()}
        return self._transcripts

    def text_of(self, clip: DecodedClip) -> str | None:
        if _has_text(clip.row):
            return str(clip.row["text"])
        if self.uses_asr:
            t = self.transcripts.get(clip.keys.get("media", ""))
            return t if t and t.strip() else None
        return None

    def missing_input(self, clip: DecodedClip) -> tuple[str, str] | None:
        if self.text_of(clip) is not None:
            return None
        if self.uses_asr and clip.keys.get("media") in self.transcripts:
            return ("absent", "the ASR transcript is empty")
        how = "and no ASR transcript" if self.uses_asr else "(run asr to transcribe it)"
        return ("absent", f"no text in the manifest {how}")

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        """Per clip its text's token rows and pooled vector (the feature's ``embed_texts``, all
        texts of the batch at once), or the clip's one-line error when it has no text."""
        results: list[ClipOutput | Exception] = []
        todo: list[tuple[int, str]] = []
        for i, c in enumerate(clips):
            text = self.text_of(c)
            if text is None:
                results.append(ValueError(f"{c.clip_id}: {self.missing_input(c)[1]}"))
            else:
                results.append(ClipOutput())
                todo.append((i, text))
        for (i, _), (rows, pooled) in zip(todo, self.embed_texts([t for _, t in todo])):  # type: ignore[attr-defined]
            results[i] = ClipOutput(values=rows, pooled=pooled)
        return results
