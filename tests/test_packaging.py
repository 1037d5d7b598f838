"""Installable like any Python tool: the distribution's name and version, the bundled corpus
found and prepared outside a clone, and a wheel that holds everything the commands read."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import minigpt
from minigpt import bundled
from minigpt.config import DEFAULT_DATA
from minigpt.files import FileError

from .conftest import REPO

try:  # Python 3.11+; the dev extra's tomli covers 3.10 (a backport)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# ---- name and version ----------------------------------------------------------------------


def test_the_version_is_written_once_and_has_a_changelog_entry():
    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "minigpt.__version__"}
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", changelog, flags=re.M)
    assert releases and releases[0] == minigpt.__version__, releases  # the newest entry is this version
    assert releases == sorted(releases, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    assert len(releases) >= 4  # 0.1, 0.2, 0.3 and this one


def test_the_distribution_name_is_ours_and_every_pip_command_uses_it():
    """`minigpt` on PyPI is another project: pyproject, the README and every error message
    that tells the user to pip-install something name minigpt-toolkit (the package and the
    command keep the name minigpt)."""
    project = _pyproject()["project"]
    assert project["name"] == minigpt.DIST_NAME == "minigpt-toolkit"
    assert project["scripts"] == {"minigpt": "minigpt.cli:main"}
    texts = {p: p.read_text(encoding="utf-8") for p in [REPO / "README.md", *sorted((REPO / "minigpt").glob("*.py"))]}
    wrong = [
        f"{p.name}: {m.group(0)}"
        for p, t in texts.items()
        for m in re.finditer(r"pip install '?minigpt(\[\w+\])?'?(?![-\w])", t)
    ]
    assert not wrong, wrong
    assert "pip install minigpt-toolkit" in texts[REPO / "README.md"]


# ---- the bundled corpus --------------------------------------------------------------------


def test_the_default_data_outside_a_clone_is_the_bundled_corpus_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty directory: no data/shakespeare here
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    d = Path(bundled.data_dir(DEFAULT_DATA))
    assert d.is_absolute() and d.parent == tmp_path / "cache" and d.name.startswith("shakespeare-")
    for name in bundled.CORPUS_FILES:  # copies of the package's files, byte for byte
        assert (d / name).read_bytes() == (bundled.CORPUS / name).read_bytes()
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    assert Path(bundled.data_dir(DEFAULT_DATA)) == d  # the second run finds the same directory, untouched
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before
    # Where data/shakespeare exists (a clone that prepared it there), it is used as it is.
    (tmp_path / DEFAULT_DATA).mkdir(parents=True)
    assert bundled.data_dir(DEFAULT_DATA) == DEFAULT_DATA
    assert bundled.data_dir("data/mine") == "data/mine"  # and any other --data is left alone


def test_the_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIGPT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bundled.cache_root() == tmp_path / "xdg" / "minigpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if sys.platform != "win32":
        assert bundled.cache_root() == tmp_path / "home" / ".cache" / "minigpt"


def test_an_unwritable_cache_is_one_line_naming_the_way_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "file"))
    with pytest.raises(FileError) as e:
        bundled.data_dir(DEFAULT_DATA)
    assert "MINIGPT_CACHE" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_a_bare_train_in_an_empty_directory_prepares_the_bundled_corpus(tmp_path):
    """`minigpt train` with no --data, outside a clone: the corpus is prepared in the cache
    (never in the package), trained on, and recorded so `eval` finds it from elsewhere."""
    work, cache = tmp_path / "empty", tmp_path / "cache"
    work.mkdir()
    env = dict(os.environ, MINIGPT_CACHE=str(cache), PYTHONPATH=str(REPO))
    small = (
        "--max-steps 4 --eval-interval 2 --eval-steps 1 --sample-tokens 8 --n-layer 1 --n-head 2 --n-embd 32".split()
    )
    r = subprocess.run(
        [sys.executable, "-m", "minigpt.cli", "train", *small, "--batch-size", "4", "--quiet"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    (prepared,) = cache.iterdir()
    meta = json.loads((prepared / "meta.json").read_text())
    # The same tokens as the clone's data/shakespeare (the closing note of 0.1 measured 1,670,203).
    assert meta["vocab_size"] == 2048 and meta["splits"]["train"]["tokens"] == 1_670_203
    run = json.loads((work / "out" / "shakespeare" / "train_config.json").read_text())
    assert run["data"]["data"] == str(prepared)
    assert not list(bundled.CORPUS.glob("*.bin")) and not (bundled.CORPUS / "meta.json").exists()
    evaluate = ["eval", "--checkpoint", str(work / "out" / "shakespeare"), "--samples", "0", "--max-tokens", "500"]
    e = subprocess.run(
        [sys.executable, "-m", "minigpt.cli", *evaluate, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert e.returncode == 0, e.stderr
    assert json.loads(e.stdout)["data"] == str(prepared)


# ---- the wheel -----------------------------------------------------------------------------


def _read_by_the_commands() -> set[str]:
    """Every file under minigpt/ that the installed commands read: each module, the pages
    the code opens (viewer.html, playground.html: found by their names in the source), and
    the corpus files bundled.py copies."""
    pkg = REPO / "minigpt"
    modules = [p for p in pkg.rglob("*.py") if "texts" not in p.relative_to(pkg).parts]  # texts/: data, not code
    needed = {p.relative_to(REPO).as_posix() for p in modules}
    source = "\n".join(p.read_text(encoding="utf-8") for p in modules)
    needed |= {p.relative_to(REPO).as_posix() for p in pkg.rglob("*.html") if p.name in source}
    needed |= {f"minigpt/texts/shakespeare/{name}" for name in bundled.CORPUS_FILES}
    return needed


@pytest.mark.slow
def test_the_wheel_holds_everything_the_commands_read(tmp_path):
    pytest.importorskip("build", reason="the dev extra's `build` builds the wheel")
    src = tmp_path / "src"  # a copy, so that building writes nothing into the checkout
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "out", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".ruff_cache", "data"
        ),
    )
    r = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"minigpt_toolkit-{minigpt.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = _read_by_the_commands()
    assert {
        "minigpt/viewer.html",
        "minigpt/serve/playground.html",
        "minigpt/texts/shakespeare/shakespeare.txt.gz",
    } <= needed
    assert not needed - names, sorted(needed - names)
    assert not [n for n in names if n.endswith((".bin", "meta.json", "tokenizer.json"))]  # no prepared data
    meta = zipfile.ZipFile(wheel).read(f"minigpt_toolkit-{minigpt.__version__}.dist-info/METADATA").decode()
    assert f"\nName: {minigpt.DIST_NAME}\n" in meta and f"\nVersion: {minigpt.__version__}\n" in meta
