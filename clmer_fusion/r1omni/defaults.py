"""R1-Omni decoding defaults, as the official inference uses them (light: no torch, no transformers)."""

DEFAULT_INSTRUCTION = (
    "As an emotional recognition expert; throughout the video, which emotion conveyed by the "
    "characters is the most obvious to you?  Output the thinking process in <think> </think> and "
    "final emotion in <answer> </answer> tags."
)

# HumanOmni's mm_infer: max_new_tokens 2048 (long reasoning must reach </answer>), greedy
DEFAULT_MAX_NEW_TOKENS = 2048
# a clip without audio: the official process_audio feeds 10 s of silence through the audio tower
NO_AUDIO_POLICIES = ("silence", "video-only")
SILENCE_SECONDS = 10.0
