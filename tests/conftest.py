"""Shared fixtures: tiny corpora, tokenizers, datasets and models made inside the tests."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

# The shared benchmark corpus, read where present (never copied into the repo); a clone
# elsewhere can point MINIGPT_TINYSHAKESPEARE at it.
TINYSHAKESPEARE = Path(
    os.environ.get("MINIGPT_TINYSHAKESPEARE")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
)
REPO = Path(__file__).resolve().parents[1]


def make_corpus(n_lines: int = 400, seed: int = 0) -> str:
    """A small play-like text with speaker names, indentation, punctuation and a little
    non-ASCII, so tokenizers and models have structure to learn."""
    rng = random.Random(seed)
    names = ["ROMEO", "JULIET", "NURSE", "FRIAR LAURENCE", "MERCUTIO"]
    words = (
        "love night day sweet death fair thou thee my heart light sun moon star "
        "gentle sorrow kiss name rose hate young old art dost hath"
    ).split()
    lines = []
    for i in range(n_lines):
        if i % 5 == 0:
            lines.append(f"\n{rng.choice(names)}:")
        w = [rng.choice(words) for _ in range(rng.randint(3, 9))]
        line = " ".join(w).capitalize() + rng.choice([",", ".", ";", "!", "?", " —", "'s é"])
        lines.append(("    " if rng.random() < 0.1 else "") + line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_text() -> str:
    return make_corpus()


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, corpus_text) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "play.txt"
    p.write_text(corpus_text, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory, corpus_file) -> Path:
    """A prepared dataset (vocab 300) of the small play."""
    from minigpt.data import prepare

    out = tmp_path_factory.mktemp("ds")
    prepare([corpus_file], out, vocab_size=300, progress=False)
    return out


@pytest.fixture(scope="session")
def tokenizer(dataset_dir):
    from minigpt.tokenizer import Tokenizer

    return Tokenizer.load(dataset_dir / "tokenizer.json")


def tiny_gpt(vocab_size: int = 300, pos_encoding: str = "learned", seed: int = 0, **kw):
    from minigpt.model import GPT, GPTConfig

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32, pos_encoding=pos_encoding)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run `python -m minigpt.cli ARGS` in a subprocess (a real exit code, real stderr)."""
    import subprocess
    import sys

    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "minigpt.cli", *args],
        cwd=cwd or REPO,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc, *needles: str) -> None:
    """Exit code 2, exactly one line on stderr, no traceback, and the line says what's wrong."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, proc.stderr
    for n in needles:
        assert n in err, (n, err)


# ---- headless Chromium (Debian's), for the page tests ----------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def need_browser():
    """Playwright's sync API, or a skip (a failure where MINIGPT_REQUIRE_BROWSER=1, as in CI)
    when Debian's chromium or the playwright package is missing. Never downloads a browser."""
    required = os.environ.get("MINIGPT_REQUIRE_BROWSER") == "1"
    if not CHROMIUM.exists():
        if required:
            pytest.fail(
                f"MINIGPT_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
            )
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("MINIGPT_REQUIRE_BROWSER=1 but the playwright package is missing (pip install -e '.[dev]')")
        pytest.skip("playwright is not installed")
    return sync_playwright
