"""Datasets, one import away: `from minigpt.data import prepare, Dataset, WindowSampler`.

The code lives by concern (this module only re-exports it, for code written against
the single module it once was):

    inputs.py   which files the INPUT arguments name, and their text (UTF-8 checked)
    corpus.py   text -> a prepared dataset directory (`prepare`), staged and published atomically
    dataset.py  reading a prepared dataset for training (`Dataset`, `WindowSampler`, `read_meta`)
"""

from __future__ import annotations

from .corpus import ENCODE_PIECE, Terminated, parse_size, prepare, prepare_from_recipe
from .dataset import (
    DATASET_FILES,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    RECIPE_FILE,
    SPLITS,
    Dataset,
    WindowSampler,
    eval_offsets,
    read_meta,
    token_dtype,
    windows,
)
from .inputs import READ_BLOCK, read_text_chunks, resolve_inputs, text_size

__all__ = [
    "ENCODE_PIECE",
    "Terminated",
    "parse_size",
    "prepare",
    "prepare_from_recipe",
    "DATASET_FILES",
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "META_FILE",
    "RECIPE_FILE",
    "SPLITS",
    "Dataset",
    "WindowSampler",
    "eval_offsets",
    "read_meta",
    "token_dtype",
    "windows",
    "READ_BLOCK",
    "read_text_chunks",
    "resolve_inputs",
    "text_size",
]
