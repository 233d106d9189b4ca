"""R1-Omni decoding defaults, as the official inference uses them (light: no torch, no transformers)."""

DEFAULT_INSTRUCTION = (
    "As an emotional recognition expert; throughout the video, which emotion conveyed by the "
    "characters is the most obvious to you?  Output the thinking process in <think> </think> and "
    "final emotion in <answer> </answer> tags."
)
