"""Files minigpt did not write (issue 23): writers replace only what they wrote, readers
open only regular files, every JSON number obeys one rule, Hugging Face sources are
checked value by value, and every message is one line.

Never aimed at real device nodes: FIFOs and symbolic links made in tmp_path stand for them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from minigpt import cli, files
from minigpt.checkpoint import load_checkpoint, read_run, save_checkpoint
from minigpt.errors import CheckpointError, ConfigError, DataError, MiniGPTError, one_line
from minigpt.evaluate import load_run
from minigpt.hf import export_hf

from .conftest import assert_one_line_error, run_cli, tiny_gpt

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")


def main(*argv: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr); an exception escaping is a bug."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def one_line_exit_2(rc: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "c"
    save_checkpoint(path, tiny_gpt(vocab_size=tokenizer.vocab_size), tokenizer, run={"step": 1, "num_params": 5})
    return path


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory, ckpt) -> Path:
    return export_hf(ckpt, tmp_path_factory.mktemp("hf") / "gpt2")


@pytest.fixture(scope="module")
def hf_qwen3(tmp_path_factory, tokenizer) -> Path:
    c = tmp_path_factory.mktemp("q") / "c"
    model = tiny_gpt(
        vocab_size=tokenizer.vocab_size, pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False
    )
    save_checkpoint(c, model, tokenizer)
    return export_hf(c, c.parent / "qwen3")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _state(p: Path) -> tuple:
    """What a test compares before and after: the kind of thing at p, where a link points,
    and what a regular target holds."""
    st_ = os.lstat(p)
    if stat.S_ISLNK(st_.st_mode):
        return ("link", os.readlink(p))
    if stat.S_ISFIFO(st_.st_mode):
        return ("fifo", st_.st_ino)
    return ("other", st_.st_mode)


# ---- writers replace only what they wrote --------------------------------------------------------


def _targets(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, and a symbolic link to a directory elsewhere that holds a file of the user's."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    return {"fifo": fifo, "link": link}


@needs_fifo
@pytest.mark.parametrize("target", ["fifo", "link"])
def test_force_never_replaces_a_fifo_or_a_symlink(tmp_path, ckpt, hf_gpt2, corpus_file, target):
    t = _targets(tmp_path)[target]
    before = _state(t)
    for argv in (
        ["export-hf", str(ckpt), str(t), "--force"],
        ["import-hf", str(hf_gpt2), str(t), "--force"],
        ["attention", "--checkpoint", str(ckpt), "--prompt", "ROMEO: hi", "--npz", str(t)],
    ):
        rc, _, err = main(*argv)
        one_line_exit_2(rc, err, str(t), "minigpt did not write")
        assert _state(t) == before, argv
    assert (tmp_path / "elsewhere" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "fifo", "link"]  # no temporary left


@needs_fifo
def test_prepare_force_never_replaces_a_fifo_or_a_symlink(tmp_path, corpus_file):
    out = tmp_path / "ds"
    out.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    os.mkfifo(out / "train.bin")
    (out / "val.bin").symlink_to(outside)
    rc, _, err = main("prepare", str(corpus_file), "--out", str(out), "--vocab-size", "280", "--force", "--quiet")
    one_line_exit_2(rc, err, "train.bin", "FIFO")
    assert stat.S_ISFIFO(os.lstat(out / "train.bin").st_mode)
    os.unlink(out / "train.bin")
    rc, _, err = main("prepare", str(corpus_file), "--out", str(out), "--vocab-size", "280", "--force", "--quiet")
    one_line_exit_2(rc, err, "val.bin", "symbolic link")
    assert os.readlink(out / "val.bin") == str(outside) and outside.read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["val.bin"]  # no staging directory left


def test_force_replaces_an_earlier_output_but_not_a_directory_tree(tmp_path, ckpt):
    out = tmp_path / "hf"
    rc, _, err = main("export-hf", str(ckpt), str(out))
    assert rc == 0, err
    rc, _, err = main("export-hf", str(ckpt), str(out), "--force")  # an earlier export: replaced
    assert rc == 0, err
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "letter.txt").write_text("mine")
    rc, _, err = main("export-hf", str(ckpt), str(home), "--force")  # a tree of someone's files: never
    one_line_exit_2(rc, err, str(home), "Documents")
    assert (home / "Documents" / "letter.txt").read_text() == "mine"


def test_check_replaceable_names_each_kind(tmp_path):
    (tmp_path / "f").write_text("x")
    files.check_replaceable(tmp_path / "f", directory=False)  # a regular file: fine
    files.check_replaceable(tmp_path / "missing", directory=True)  # nothing there: fine
    with pytest.raises(files.FileError, match="is a file") as e:
        files.check_replaceable(tmp_path / "f", directory=True)
    assert e.value.kind == "not-ours"
    (tmp_path / "d").mkdir()
    with pytest.raises(files.FileError, match="is a directory"):
        files.check_replaceable(tmp_path / "d", directory=False)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "p")
        with pytest.raises(files.FileError, match="FIFO"):
            files.check_replaceable(tmp_path / "p", directory=False)
        with pytest.raises(files.FileError, match="FIFO"):
            files.atomic_write(tmp_path / "p", "x")
        assert stat.S_ISFIFO(os.lstat(tmp_path / "p").st_mode)


# ---- readers open only regular files ---------------------------------------------------------------


@needs_fifo
@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "run.json"])
def test_a_fifo_in_a_checkpoint_is_refused_not_waited_on(tmp_path, ckpt, name):
    c = _copy(ckpt, tmp_path / "c")
    os.unlink(c / name)
    os.mkfifo(c / name)
    proc = run_cli("sample", "--checkpoint", str(c), "--prompt", "hi", "--max-new-tokens", "2", timeout=60)
    if name in ("tokenizer.json", "run.json"):  # optional files: a FIFO is no file (read as missing or refused)
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr
    else:
        assert_one_line_error(proc, name)


@needs_fifo
def test_read_bytes_refuses_a_fifo_at_once(tmp_path):
    os.mkfifo(tmp_path / "p")
    with pytest.raises(MiniGPTError, match="is a FIFO"):
        files.read_json(tmp_path / "p", "a config")
    with pytest.raises(files.FileError, match="is a FIFO"):
        files.sha256_file(tmp_path / "p")


# ---- one numeric rule for every JSON number -------------------------------------------------------


@pytest.mark.parametrize(
    "text, ok",
    [
        ('{"a": 9223372036854775807}', True),
        ('{"a": -9223372036854775807}', True),
        ('{"a": 9223372036854775808}', False),
        ('{"a": ' + "9" * 400 + "}", False),
        ('{"a": 1e308}', True),
        ('{"a": 1e309}', False),
        ('{"a": -1e999}', False),
        ('{"a": NaN}', False),
        ('{"a": 5e-324}', True),
    ],
)
def test_the_json_number_rule(text, ok):
    if ok:
        assert files.parse_json(text, "x")["a"] == json.loads(text)["a"]
    else:
        with pytest.raises(MiniGPTError, match="out of range|not valid JSON"):
            files.parse_json(text, "x")


def _edit(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    target = obj["model"] if "model" in obj and isinstance(obj["model"], dict) and path.name == "config.json" else obj
    target.update(changes)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("value", ["1" + "0" * 30, "1e30", "1" + "0" * 400, '"inf"', "-1", "true"])
def test_an_edited_layer_norm_eps_is_one_line_for_every_reader(tmp_path, ckpt, value):
    c = _copy(ckpt, tmp_path / "c")
    text = (c / "config.json").read_text().replace('"layer_norm_eps": 1e-05', f'"layer_norm_eps": {value}')
    assert text != (c / "config.json").read_text()
    (c / "config.json").write_text(text)
    for argv in (
        ["sample", "--checkpoint", str(c), "--prompt", "hi", "--max-new-tokens", "2"],
        ["attention", "--checkpoint", str(c), "--prompt", "ROMEO: hi"],
        ["heads", "--checkpoint", str(c), "--prompt", "ROMEO: hi"],
    ):
        rc, _, err = main(*argv)
        one_line_exit_2(rc, err, "config.json")


def test_compare_skips_metric_lines_with_numbers_out_of_range(tmp_path, ckpt):
    run = tmp_path / "run"
    shutil.copytree(ckpt, run / "step-0000001")
    os.symlink("step-0000001", run / "last")
    big = "1" + "0" * 400
    (run / "metrics.jsonl").write_text(
        f'{{"step": 1, "val_bpb": {big}, "time_s": 1.0}}\n{{"step": 2, "val_bpb": 2.5, "time_s": {big}}}\n'
        '{"step": 3, "val_bpb": 2.25, "time_s": 3.0}\n'
    )
    assert load_run(run)["curve"] == [(3.0, 2.25)]  # the two lines out of range skipped, the good one read
    rc, out, err = main("compare", str(run))
    assert rc == 0 and "Traceback" not in err and "2.25" in out, (rc, err)
    (run / "last" / "run.json").write_text(f'{{"step": 1, "num_params": {big}}}')
    rc, _, err = main("compare", str(run))
    one_line_exit_2(rc, err, "run.json", "out of range")


def test_weights_in_float8_are_refused_by_name(tmp_path, ckpt, hf_gpt2):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    c = _copy(ckpt, tmp_path / "c")
    t = load_file(str(c / "model.safetensors"))
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in t.items()}, str(c / "model.safetensors"))
    rc, _, err = main("sample", "--checkpoint", str(c), "--prompt", "hi", "--max-new-tokens", "2")
    one_line_exit_2(rc, err, "float8_e4m3fn", "float32")
    h = _copy(hf_gpt2, tmp_path / "hf")
    t = load_file(str(h / "model.safetensors"))
    save_file({k: v.to(torch.float8_e5m2) for k, v in t.items()}, str(h / "model.safetensors"))
    rc, _, err = main("import-hf", str(h), str(tmp_path / "out"))
    one_line_exit_2(rc, err, "float8_e5m2")
    assert not (tmp_path / "out").exists()


def test_written_files_share_one_mode(tmp_path, ckpt):
    """model.safetensors was 0600 while every other file was 0644 (safetensors writes it
    private): every file of a checkpoint and an export gets the same mode, 0666 less the umask."""
    want = 0o666 & ~files.umask()
    for d in (ckpt, export_hf(ckpt, tmp_path / "hf")):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}
        assert set(modes.values()) == {want}, modes


# ---- Hugging Face sources: each hostile value is one line, exit 2 ------------------------------------


HOSTILE_GPT2 = [
    ("activation_function", ["gelu"]),
    ("activation_function", {}),
    ("architectures", 5),
    ("layer_norm_epsilon", "inf"),
    ("resid_pdrop", "0.1"),
    ("tie_word_embeddings", "false"),
    ("n_inner", {}),
]
HUGE = "1" + "0" * 400


@pytest.mark.parametrize("key, value", HOSTILE_GPT2)
def test_hostile_gpt2_config_values(tmp_path, hf_gpt2, key, value):
    h = _copy(hf_gpt2, tmp_path / "hf")
    _edit(h / "config.json", **{key: value})
    rc, _, err = main("import-hf", str(h), str(tmp_path / "out"))
    one_line_exit_2(rc, err, "config.json", key)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kind, key",
    [("gpt2", "resid_pdrop"), ("gpt2", "layer_norm_epsilon"), ("qwen3", "rms_norm_eps"), ("qwen3", "rope_theta")],
)
def test_a_huge_integer_in_a_float_field_is_one_line(tmp_path, hf_gpt2, hf_qwen3, dataset_dir, kind, key):
    h = _copy(hf_gpt2 if kind == "gpt2" else hf_qwen3, tmp_path / "hf")
    obj = json.loads((h / "config.json").read_text())
    obj[key] = 0
    (h / "config.json").write_text(json.dumps(obj).replace(f'"{key}": 0', f'"{key}": {HUGE}'))
    rc, _, err = main("import-hf", str(h), str(tmp_path / "out"))
    one_line_exit_2(rc, err, "config.json", "out of range")
    rc, _, err = main("train", "--init-from", str(h), "--data", str(dataset_dir), "--out", str(tmp_path / "run"))
    one_line_exit_2(rc, err, "config.json")
    assert not (tmp_path / "run").exists()


def test_layer_norm_epsilon_as_a_string_is_refused_not_imported(tmp_path, hf_gpt2):
    """It was accepted: import exited 0 and wrote a checkpoint minigpt then refused itself."""
    h = _copy(hf_gpt2, tmp_path / "hf")
    _edit(h / "config.json", layer_norm_epsilon="inf")
    rc, _, err = main("import-hf", str(h), str(tmp_path / "out"))
    one_line_exit_2(rc, err, "layer_norm_epsilon", "'inf'")
    assert not (tmp_path / "out").exists()


def test_a_merge_whose_result_is_not_in_the_vocabulary(tmp_path, hf_gpt2):
    from minigpt.tokenizer import Tokenizer

    h = _copy(hf_gpt2, tmp_path / "hf")
    os.unlink(h / "tokenizer.json")
    (h / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "<|endoftext|>": 2}))
    (h / "merges.txt").write_text("#version: 0.2\na b\n")  # "ab" is not in vocab.json
    with pytest.raises(DataError, match="'ab', which is not in vocab.json"):
        Tokenizer.load(h)
    rc, _, err = main("import-hf", str(h), str(tmp_path / "out"))
    one_line_exit_2(rc, err, "merges.txt", "'ab'")


def test_a_cache_ref_that_leaves_the_cache_is_refused(tmp_path, monkeypatch, hf_gpt2):
    from minigpt import pretrained

    cache = tmp_path / "hub"
    folder = cache / "models--someone--tiny"
    (folder / "refs").mkdir(parents=True)
    (folder / "snapshots").mkdir()
    shutil.copytree(hf_gpt2, tmp_path / "elsewhere")  # a model outside the cache
    (folder / "refs" / "main").write_text("../../../elsewhere")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="outside the cache"):
        pretrained.inspect_source("someone/tiny")


# ---- messages are one line ---------------------------------------------------------------------------


def test_control_characters_in_messages_are_escaped(tmp_path, dataset_dir):
    assert one_line("gpt2\n\x1b[31mred\u2028") == "gpt2\\n\\x1b[31mred\\u2028"
    assert one_line(one_line("a\nb")) == "a\\nb"  # idempotent: a message wrapped in another is escaped once
    assert str(ConfigError("x\ny", field="x")) == "x\\ny" and ConfigError("x", field="x").field == "x"
    proc = run_cli(
        "train",
        "--init-from",
        "gpt2\n",
        "--data",
        str(dataset_dir),
        "--out",
        str(tmp_path / "r"),
        env={"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"},
    )
    assert_one_line_error(proc, "gpt2\\n")


def test_errors_carry_what_they_are_about(tmp_path, corpus_file):
    from minigpt.config import GPTConfig

    with pytest.raises(ConfigError) as e:
        GPTConfig(vocab_size=10, layer_norm_eps=10**30)
    assert e.value.field == "layer_norm_eps"
    from minigpt import prepare

    prepare([corpus_file], tmp_path / "d", vocab_size=280, progress=False)
    with pytest.raises(DataError) as e:
        prepare([corpus_file], tmp_path / "d", vocab_size=300, progress=False)
    assert e.value.kind == "exists"


# ---- arbitrary JSON at every file we read (property-based) -------------------------------------------


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.sampled_from(["inf", "nan", "\ud800", "1e999"])
)
HOSTILE = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)


def _dumps(value) -> str:
    """JSON text, with huge integers written out (json.dumps does) and floats beyond range
    as literals that overflow (1e999), and nesting as deep as asked."""
    return json.dumps(value, ensure_ascii=True)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


GPT2_KEYS = [
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "resid_pdrop",
    "layer_norm_epsilon",
    "scale_attn_weights",
    "tie_word_embeddings",
    "architectures",
    "model_type",
    "scale_attn_by_inverse_layer_idx",
    "add_cross_attention",
]
QWEN3_KEYS = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "rms_norm_eps",
    "rope_theta",
    "rope_parameters",
    "attention_dropout",
    "tie_word_embeddings",
    "max_position_embeddings",
    "attention_bias",
    "architectures",
]


def _clean_or_one_line(fn) -> None:
    try:
        fn()
    except MiniGPTError as e:
        assert "\n" not in str(e)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["gpt2", "qwen3"]), data=st.data(), value=HOSTILE)
def test_arbitrary_values_in_an_hf_config(tmp_path_factory, hf_gpt2, hf_qwen3, kind, data, value):
    from minigpt.hf import hf_architecture

    key = data.draw(st.sampled_from(GPT2_KEYS if kind == "gpt2" else QWEN3_KEYS))
    src = hf_gpt2 if kind == "gpt2" else hf_qwen3
    obj = json.loads((src / "config.json").read_text())
    obj[key] = value
    text = _dumps(obj)
    _clean_or_one_line(lambda: hf_architecture(files.parse_json(text, "config.json", CheckpointError)))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=HOSTILE, deep=st.sampled_from([0, 5000]))
def test_arbitrary_hf_config_through_import_hf(tmp_path_factory, hf_gpt2, value, deep):
    h = tmp_path_factory.mktemp("hfx") / "hf"
    _copy(hf_gpt2, h)
    (h / "config.json").write_text(_deep(deep) if deep else _dumps(value))
    rc, _, err = main("import-hf", str(h), str(h.parent / "out"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


RUN_KEYS = {
    "config.json": ["model", "model_type", "version", "format"],
    "model": [
        "vocab_size",
        "block_size",
        "n_layer",
        "n_head",
        "n_embd",
        "dropout",
        "layer_norm_eps",
        "rope_base",
        "logit_softcap",
        "bias",
        "mlp",
        "mlp_hidden",
    ],
    "run.json": ["step", "num_params", "train_time_s", "val_bpb", "best_val_loss", "config", "model_type"],
    "metrics.jsonl": ["step", "val_bpb", "time_s", "train_loss", "lr"],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(sorted(RUN_KEYS)), data=st.data(), value=HOSTILE)
def test_arbitrary_values_in_every_run_file(tmp_path_factory, ckpt, where, data, value):
    key = data.draw(st.sampled_from(RUN_KEYS[where]))
    run = tmp_path_factory.mktemp("runx")
    c = run / "step-0000001"
    shutil.copytree(ckpt, c)
    os.symlink("step-0000001", run / "last")
    if where == "metrics.jsonl":
        (run / "metrics.jsonl").write_text(_dumps({"step": 1, key: value}) + "\n" + _dumps(value) + "\n")
    else:
        name = "config.json" if where == "model" else where
        obj = json.loads((c / name).read_text())
        (obj["model"] if where == "model" else obj)[key] = value
        (c / name).write_text(_dumps(obj))
    for fn in (lambda: load_checkpoint(c), lambda: read_run(c), lambda: load_run(run)):
        _clean_or_one_line(fn)
    if where == "model" and sys.platform != "win32":  # through the command line: one line and exit 2, or a sample
        rc, _, err = main("sample", "--checkpoint", str(c), "--prompt", "hi", "--max-new-tokens", "2")
        assert rc in (0, 2) and "Traceback" not in err and len(err.strip().splitlines()) <= 1, (rc, err)


def test_create_directories_makes_and_reports_only_what_was_missing(tmp_path):
    (tmp_path / "a").mkdir()
    assert files.topmost_missing(tmp_path / "a") is None
    assert files.topmost_missing(tmp_path / "a" / "b" / "c") == tmp_path / "a" / "b"
    made = files.create_directories(tmp_path / "a" / "b" / "c")
    assert made == [tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"] and (tmp_path / "a" / "b" / "c").is_dir()
    assert files.create_directories(tmp_path / "a" / "b" / "c") == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError):
        files.create_directories(tmp_path / "f" / "x")  # under a file: nothing made, nothing left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "f"]


def test_the_run_lock_is_held_once(tmp_path):
    from minigpt.checkpoint import RunDirectory

    rd = RunDirectory(tmp_path)
    with rd.lock():
        with pytest.raises(MiniGPTError, match="in use by another minigpt training process") as e:
            with RunDirectory(tmp_path).lock():
                pass
        assert e.value.kind == "locked"
    with RunDirectory(tmp_path).lock():  # released on exit: the next run takes it
        pass


def test_create_directories_never_claims_a_directory_made_meanwhile(tmp_path, monkeypatch):
    real = Path.mkdir

    def racing(self, *a, **k):  # another process creates `out` just before our mkdir
        if self.name == "out" and not self.exists():
            real(self)
            raise FileExistsError(17, "File exists", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", racing)
    assert files.create_directories(tmp_path / "out" / "sub") == [tmp_path / "out" / "sub"]
