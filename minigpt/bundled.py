"""The corpus that ships inside the package, and where a bare `minigpt train` prepares it.

With no --data, training reads `data/shakespeare` (config.DEFAULT_DATA). Where a
directory of that name exists -- a clone that prepared it there before, or one a user
made -- it is used as it is. Anywhere else (an installed wheel, run from an empty
directory; a fresh clone) the name means the corpus bundled in this package,
`minigpt/texts/shakespeare/`: its text and its `dataset.toml` recipe are copied once
into a cache directory, which `train` then prepares in place on first use, as any
directory with a recipe. Nothing is ever written inside the installed package.

The cache directory is `$MINIGPT_CACHE`, else `$XDG_CACHE_HOME/minigpt`, else
`~/.cache/minigpt` (`%LOCALAPPDATA%\\minigpt` on Windows). Each version of the corpus
gets a directory of its own, named by a hash of its files, so an upgrade that changed the
corpus never meets a dataset prepared from the old one:

    >>> data_dir("data/mine")          # anything but the default is left alone
    'data/mine'
    >>> data_dir("data/shakespeare")   # doctest: +SKIP
    '/home/me/.cache/minigpt/shakespeare-3f2a9c1b04de'
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from . import files
from .config import DEFAULT_DATA
from .files import FileError

CORPUS = Path(__file__).resolve().parent / "texts" / "shakespeare"
# What training reads. The directory also holds README.md (where the text comes from, its
# licence) and build.py (rebuilds the .gz byte for byte); both ship with it, unread.
CORPUS_FILES = ("dataset.toml", "shakespeare.txt.gz")


def cache_root() -> Path:
    """Where minigpt keeps what it prepares for the user (absolute)."""
    if os.environ.get("MINIGPT_CACHE"):
        return Path(os.environ["MINIGPT_CACHE"]).expanduser().resolve()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser().resolve() / "minigpt"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "minigpt"
    return Path.home() / ".cache" / "minigpt"


def data_dir(path: str) -> str:
    """The directory training should read for --data `path`: `path` itself, unless it is
    the default and no such directory exists, in which case the bundled corpus's cache
    directory (created and filled on first use)."""
    if path != DEFAULT_DATA or os.path.lexists(path):
        return path
    return str(corpus_cache())


def corpus_cache() -> Path:
    """The bundled corpus's cache directory, holding a copy of its text and recipe (not yet
    prepared: `train` prepares a directory with a recipe on first use)."""
    digest = hashlib.sha256()
    for name in CORPUS_FILES:
        digest.update(name.encode() + b"\0" + (CORPUS / name).read_bytes())
    target = cache_root() / f"shakespeare-{digest.hexdigest()[:12]}"
    try:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise files.os_error(e, target, "cannot create") from None
        for name in CORPUS_FILES:
            if not (target / name).is_file():  # copied whole or not at all: two first runs at once are safe
                with files.atomic_output(target / name) as tmp:
                    shutil.copyfile(CORPUS / name, tmp)
    except FileError as e:
        raise FileError(
            f"{e} (the bundled corpus is prepared there; set MINIGPT_CACHE to a writable directory)", e.errno
        ) from None
    return target
