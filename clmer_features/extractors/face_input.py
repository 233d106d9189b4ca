"""Vision features on cached face crops: what ``--param clip.input=faces`` switches on.

A vision extractor with ``input=faces`` requires the ``faces`` feature: it
decodes nothing, reads each clip's aligned crops (and their times) from the
store that ``faces`` wrote (decode once, detect once, encode many), and puts
that faces spec's id into its own spec, so crops from another detector or
another crop size are another cache. A clip that is absent for faces (no face
in any sampled frame) is absent for the encoder too; a clip whose faces failed
is an error naming why.

``input=frames`` (the default) leaves the extractor and its spec exactly as
they were.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from clmer_features.errors import ClmerError, StoreError
from clmer_features.extractors.base import DecodedClip, RunInputs
from clmer_features.spec import FeatureSpec

INPUT_HELP = ("frames: the decoded video frames; faces: the aligned face crops the faces feature cached "
              "(requires faces: -f faces,NAME or a store that holds it)")
INPUTS = ("frames", "faces")


def evenly(n: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``n`` rows (an index repeats when ``n < count``, as
    MERTools repeats frames of short videos); all rows when ``count`` is 0."""
    if count <= 0:
        return np.arange(n)
    return np.round(np.linspace(0, n - 1, count)).astype(np.int64)


class FaceInput:
    """The faces side of a vision extractor: set up in ``__init__`` with :meth:`setup_faces`."""

    name: str
    input: str
    requires: tuple[str, ...]
    requires_when = (("input", "faces", ("faces",)),)

    def setup_faces(self, which: str) -> None:
        self.uses_faces = which == "faces"
        self._faces_inputs: RunInputs | None = None
        self._faces_reader: Any = None
        if self.uses_faces:
            self.input = "faces"  # no decoding: the crops come from the store
            self.requires = tuple(dict.fromkeys((*self.requires, *self.requires_when[0][2])))

    def bind(self, inputs: RunInputs) -> None:
        self._faces_inputs, self._faces_reader = inputs, None

    def faces_spec(self) -> FeatureSpec:
        spec = self._faces_inputs.spec_of("faces") if self._faces_inputs is not None else None
        if spec is not None:
            return spec
        stored = self._faces_inputs.store().specs("faces") if self._faces_inputs is not None else []
        if len(stored) > 1:
            raise ClmerError(f"{self.name}.input=faces: the store holds {len(stored)} faces specs "
                             f"({', '.join(s.spec_id for s in stored)}); add faces to --features with the "
                             f"parameters of the one to use")
        raise ClmerError(f"{self.name}.input=faces needs the faces feature: add faces to --features "
                         f"(-f faces,{self.name}) or extract it into this cache first")

    def faces_spec_params(self, params: dict[str, Any], sampling: tuple[str, ...]) -> dict[str, Any]:
        """``params`` for the spec: unchanged for frames; for faces, without the frame-sampling
        parameters named in ``sampling`` (the crops' own sampling is in the faces spec) and with
        the faces spec id."""
        params = dict(params)
        params.pop("input", None)
        if not self.uses_faces:
            return params
        for name in sampling:
            params.pop(name, None)
        return {**params, "input": "faces", "faces": self.faces_spec().spec_id}

    def _reader(self) -> Any:
        if self._faces_reader is None:
            spec = self.faces_spec()
            try:
                self._faces_reader = self._faces_inputs.store().feature("faces", spec=spec)
            except StoreError as exc:
                raise ClmerError(f"{self.name}.input=faces: {exc}") from None
        return self._faces_reader

    def missing_input(self, clip: DecodedClip) -> tuple[str, str] | None:
        """With ``input=faces`` the clip's cached faces are its input; else the extractor's own rule."""
        return self.missing_faces(clip) if self.uses_faces else super().missing_input(clip)  # type: ignore[misc]

    def missing_faces(self, clip: DecodedClip) -> tuple[str, str] | None:
        reader = self._reader()
        if clip.clip_id in reader:
            return None
        fails = reader.failures()
        mine = fails.filter(fails["clip_id"] == clip.clip_id) if fails.height else fails
        if mine.height:
            r = mine.row(mine.height - 1, named=True)
            kind = "absent" if r["kind"] == "absent" else "error"
            return (kind, f"faces {r['kind']}: {r['message']}")
        return ("error", f"faces has no entry for the clip (faces/{reader.spec.spec_id})")

    def face_frames(self, clip: DecodedClip, count: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """The clip's aligned crops [n, S, S, 3] uint8 and their times (``count`` > 0: that many,
        evenly spread); times are None for imported crops that came without them."""
        reader = self._reader()
        size = int(reader.spec.params["size"])
        rows = reader.get(clip.clip_id)
        times = reader.times(clip.clip_id)
        pick = evenly(len(rows), count)
        crops = np.asarray(rows, np.uint8).reshape(len(rows), size, size, 3)[pick]
        return crops, (None if times is None else np.asarray(times, np.float32)[pick])
