"""`clmer-fusion r1omni`: R1-Omni answers for a manifest, decoded from the feature cache."""
from __future__ import annotations

from pathlib import Path

import click

from clmer_fusion.r1omni.defaults import DEFAULT_INSTRUCTION, DEFAULT_MAX_NEW_TOKENS, NO_AUDIO_POLICIES


@click.command("r1omni")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cache", "cache_dir", required=True, type=click.Path(file_okay=False),
              help="Feature store root (a folder or s3://bucket/prefix) holding r1omni_vision and r1omni_audio.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="R1-Omni checkpoint folder (config.json, *.safetensors, tokenizer). Towers are not needed.")
@click.option("--instruction", default=DEFAULT_INSTRUCTION, show_default="R1-Omni's emotion question",
              help="The question asked of every clip (also what the branch gate reads).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: r1omni-results/<dataset>-<run key>].")
@click.option("--dataset", default=None, help="Store dataset name [default: the manifest's file stem].")
@click.option("--spec", "specs", multiple=True, metavar="FEATURE=SPEC_ID",
              help="Which spec of r1omni_vision or r1omni_audio to use where the store holds several (repeatable).")
@click.option("--check-fresh", is_flag=True,
              help="Fingerprint the manifest's media and refuse features extracted from media that changed since "
                   "(by default the media are not read: the cache and the manifest are enough).")
@click.option("--bert", "bert_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="bert-base-uncased folder for the gate's tokenizer [default: MODEL/bert-base-uncased or MODEL/bert].")
@click.option("--batch-size", default=8, show_default=True, help="Clips decoded together.")
@click.option("--max-new-tokens", default=DEFAULT_MAX_NEW_TOKENS, show_default=True,
              help="Longest answer, in tokens (the official inference's 2048: long reasoning reaches </answer>).")
@click.option("--no-audio", default="silence", show_default=True, type=click.Choice(NO_AUDIO_POLICIES),
              help="A clip with video but no audio: 10 s of silence through the audio tower, as the official "
                   "inference (needs --audio-tower or the models dir), or its video alone.")
@click.option("--audio-tower", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The Whisper folder that made r1omni_audio (for --no-audio silence) [default: under "
                   "--models-dir / CLMER_MODELS_DIR].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--allow-mismatch", is_flag=True,
              help="Load a checkpoint even when keys are missing, unexpected or mis-shaped (they stay random).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def r1omni_cmd(manifest: Path, cache_dir: str, model_dir: Path, instruction: str, out_dir: Path | None,
               dataset: str | None, specs: tuple[str, ...], check_fresh: bool, bert_dir: Path | None, batch_size: int,
               max_new_tokens: int, no_audio: str, audio_tower: Path | None, device: str, allow_mismatch: bool,
               no_progress: bool) -> None:
    """Decode R1-Omni answers for MANIFEST from cached tower outputs and score them.

    \b
    Needs the two tower features in the cache (run once, on a GPU if you have one):
      clmer-features extract MANIFEST --cache DIR --features r1omni_vision,r1omni_audio
    Then, as often as you like (other prompts, checkpoints), without the towers:
      clmer-fusion r1omni MANIFEST --cache DIR --model models/R1-Omni-0.5B

    Writes one JSON per clip (think, answer), combined_results.csv and score.json
    (exact match after synonyms: WAR, UAR; OV-MER set-level precision/recall/F1).
    A rerun with the same model, instruction and features reuses finished clips.
    """
    from clmer_fusion.r1omni.run import run_r1omni
    from clmer_fusion.request import parse_spec_options

    summary = run_r1omni(
        manifest, cache_dir, model_dir, instruction=instruction, out_dir=out_dir, dataset=dataset,
        spec_ids=parse_spec_options(specs), check_fresh=check_fresh,
        bert_dir=bert_dir, batch_size=batch_size, max_new_tokens=max_new_tokens, no_audio=no_audio, audio_tower=audio_tower,
        allow_mismatch=allow_mismatch, device=device, progress=not no_progress,
        echo=lambda s: click.echo(s, err=True),
    )
    click.echo(summary.format())


def register(group: click.Group) -> None:
    """Add the ``r1omni`` command to ``group``."""
    group.add_command(r1omni_cmd)
