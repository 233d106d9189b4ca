"""`clmer-features`: build, inspect and maintain feature caches.

Each topic module registers its commands on the group; each command parses
its options, calls one library function and prints the result.
"""
from __future__ import annotations

import importlib

from clmer_features.cliutil import debug_option, run_cli

import click

TOPICS = ("manifest_cmds", "store_cmds", "extract_cmds", "features_cmds", "recipe_cmds")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
def cli(debug: bool) -> None:
    """Extract, version and cache per-modality embeddings for emotion recognition.

    \b
    Typical session:
      clmer-features manifest check clips.csv
      clmer-features extract clips.csv --features siglip,emotion2vec,asr,bert --cache cache
      clmer-features status clips.csv --cache cache
      clmer-features verify --cache cache
    """


for _topic in TOPICS:
    importlib.import_module(f"clmer_features.cli.{_topic}").register(cli)


def main() -> None:
    run_cli(cli)
