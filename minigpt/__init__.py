"""minigpt: train a small GPT on your own text, sample from it, and look inside it.

The public API, imported lazily so that `import minigpt` (and `minigpt --help`) stays fast:

    from minigpt import GPT, GPTConfig, Tokenizer, prepare, load_checkpoint, generate, complete
"""

__version__ = "0.1.0"

_API = {
    "GPT": "model", "GPTConfig": "config", "KVCache": "model",
    "Tokenizer": "tokenizer",
    "prepare": "corpus", "Dataset": "dataset", "WindowSampler": "dataset",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "load_for_inference": "inference",
    "LanguageModel": "models",
    "generate": "sampling", "SamplingParams": "sampling",
    "complete": "completion",
    "TrainConfig": "config", "train": "trainer",
    "attention_maps": "inspection",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib  # lazy: `import minigpt` (and `minigpt --help`) must not import torch

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
