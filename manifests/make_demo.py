"""Make the bilingual demo set: espeak-ng English + Mandarin speech over ffmpeg test patterns.

    python manifests/make_demo.py OUT_DIR [--clips 32] [--meld ../shared/data/meld]

English sentences (and sentiment labels) come from MELD when its folder exists
(default ../shared/data/meld), else from manifests/demo_sentences.csv, which
also holds the Mandarin ones. Writes OUT_DIR/demo.csv and OUT_DIR/media/*.mp4.
`clmer-features demo` runs this and the rest of the pipeline.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clmer_demo import make_demo_set  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", default="manifests/demo", help="where demo.csv and media/ go")
    ap.add_argument("--clips", type=int, default=32, help="number of clips (half English, half Mandarin)")
    ap.add_argument("--meld", default=None, help="MELD folder (default: ../shared/data/meld if present)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = make_demo_set(args.out_dir, args.clips, meld=args.meld, seed=args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
