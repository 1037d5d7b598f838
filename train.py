"""Train a GPT: `python train.py` (no arguments) trains on the bundled Shakespeare corpus.

The same as `minigpt train`; see `python train.py --help` for every flag.
"""

from minigpt.cli import entry

if __name__ == "__main__":
    entry("train")
