"""`clmer-fusion`: train, score, explain and benchmark heads from a feature cache."""
from __future__ import annotations

import importlib

import click

from clmer_features.cliutil import debug_option, run_cli

TOPICS = ("clmer_fusion.train_cmds", "clmer_fusion.score_cmds", "clmer_fusion.r1omni.cli")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
def cli(debug: bool) -> None:
    """Work purely from a feature cache: heads in seconds, tables bit for bit.

    \b
    Typical session:
      clmer-fusion train clips.csv --cache cache --features siglip,emotion2vec,bert --head mlp
      clmer-fusion bench bench.yaml
      clmer-fusion r1omni clips.csv --cache cache --model models/R1-Omni-0.5B
    """


for _topic in TOPICS:
    importlib.import_module(_topic).register(cli)


def main() -> None:
    run_cli(cli)
