"""minigpt: train a small GPT on your own text, sample from it, and look inside it.

The public API, imported lazily so that `import minigpt` (and `minigpt --help`) stays fast:

    from minigpt import GPT, GPTConfig, Tokenizer, prepare, load_checkpoint, generate, complete
"""

# The one place the version is written: pyproject.toml reads it (dynamic version), and
# CHANGELOG.md has a section for it.
__version__ = "0.4.0"
# What pip calls it: `minigpt` on PyPI is another project, so the distribution is named
# apart while the package (`import minigpt`) and the command (`minigpt`) keep their name.
DIST_NAME = "minigpt-toolkit"

_API = {
    "GPT": "model",
    "GPTConfig": "config",
    "KVCache": "model",
    "Tokenizer": "tokenizer",
    "prepare": "corpus",
    "Dataset": "dataset",
    "WindowSampler": "dataset",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_for_inference": "inference",
    "LanguageModel": "models",
    "generate": "sampling",
    "SamplingParams": "sampling",
    "complete": "completion",
    "TrainConfig": "config",
    "train": "trainer",
    "attention_maps": "inspection",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib  # lazy: `import minigpt` (and `minigpt --help`) must not import torch

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
