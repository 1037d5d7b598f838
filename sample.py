"""Sample from a trained GPT: `python sample.py` (no arguments) continues from the default run.

The same as `minigpt sample`; see `python sample.py --help` for every flag.
"""

from minigpt.cli import entry

if __name__ == "__main__":
    entry("sample")
