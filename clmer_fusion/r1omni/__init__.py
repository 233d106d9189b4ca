"""R1-Omni decoding from cached tower outputs.

R1-Omni (HumanOmni-0.5B trained with RLVR) = SigLIP + Whisper towers -> projectors and an
instruction gate -> Qwen2. ``clmer_features`` caches the towers' outputs once
(``r1omni_vision`` 8 x 196 x 768, ``r1omni_audio`` 500 x 1280); this package does the rest
without ever building a tower:

- :mod:`.load` ``load_r1omni(model_dir)``: checkpoint folder -> model (key checks, no remote code)
- :mod:`.decode` ``R1OmniDecoder(loaded, instruction).decode(vision, audio)``: batched greedy
- :mod:`.parse` / :mod:`.score`: think/answer split; WAR/UAR after synonyms; OV-MER set scores
- :mod:`.run` ``run_r1omni(manifest, cache, model)``: the ``clmer-fusion r1omni`` command's work
- :mod:`.testing`: tiny random R1-Omni-like checkpoints and an on-the-fly tower path (tests only)
"""
