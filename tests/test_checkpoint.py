"""Checkpoints: round trip, run directories, clear errors, and never running pickles."""

import json
import os
import pickle

import pytest
import torch

from minigpt import checkpoint as ckpt_mod
from minigpt.checkpoint import RunDirectory, load_checkpoint, load_trainer_state, resolve_checkpoint, save_checkpoint
from minigpt.errors import CheckpointError

from .conftest import assert_one_line_error, run_cli, tiny_gpt


class Planted:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(path, marker):
    with open(path, "wb") as f:
        pickle.dump(Planted(str(marker)), f)


@pytest.mark.parametrize("pe, tied", [("learned", True), ("rope", False), ("sinusoidal", True)])
def test_roundtrip(tmp_path, tokenizer, pe, tied):
    m = tiny_gpt(pos_encoding=pe, tie_weights=tied, bias=not tied)
    save_checkpoint(tmp_path / "c", m, tokenizer, run={"step": 3})
    c = load_checkpoint(tmp_path / "c")
    idx = torch.randint(0, 300, (2, 9))
    assert torch.equal(c.model(idx).logits, m(idx).logits)
    assert c.model.config == m.config and c.model_type == "gpt" and c.run == {"step": 3}
    assert c.tokenizer.to_str() == tokenizer.to_str()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "config.json",
        "model.safetensors",
        "run.json",
        "tokenizer.json",
    ]
    assert (c.model.lm_head.weight is c.model.transformer.wte.weight) == tied
    assert oct((tmp_path / "c").stat().st_mode & 0o777) != oct(0o700)  # not left private by mkdtemp


def test_run_directory_best_and_last(tmp_path, tokenizer):
    run = RunDirectory(tmp_path)
    m = tiny_gpt()
    run.save(10, m, tokenizer, run={"step": 10}, trainer_state={"step": 10}, is_best=True)
    run.save(20, m, tokenizer, run={"step": 20}, trainer_state={"step": 20}, is_best=False)
    assert os.readlink(tmp_path / "best") == "step-0000010" and os.readlink(tmp_path / "last") == "step-0000020"
    assert resolve_checkpoint(tmp_path) == tmp_path / "best"
    run.save(30, m, tokenizer, run={"step": 30}, trainer_state={"step": 30}, is_best=True)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000030"]  # older ones pruned
    assert load_checkpoint(tmp_path).run["step"] == 30


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, tokenizer, monkeypatch):
    m = tiny_gpt()
    save_checkpoint(tmp_path / "c", m, tokenizer, run={"step": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c", tiny_gpt(seed=1), tokenizer, run={"step": 2})
    assert load_checkpoint(tmp_path / "c").run == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temporary directory left behind


def test_missing_truncated_and_mismatched_files_are_named(tmp_path, tokenizer):
    m = tiny_gpt()
    save_checkpoint(tmp_path / "c", m, tokenizer)
    c = tmp_path / "c"
    w = (c / "model.safetensors").read_bytes()

    (c / "model.safetensors").write_bytes(w[: len(w) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read"):
        load_checkpoint(c)
    (c / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        load_checkpoint(c)
    (c / "model.safetensors").write_bytes(w)

    cfg = json.loads((c / "config.json").read_text())
    cfg["model"]["n_embd"] = 64
    (c / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor .* has shape"):
        load_checkpoint(c)
    (c / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_checkpoint(c)
    (c / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(c)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing")


def test_checkpoint_without_tokenizer(tmp_path):
    save_checkpoint(tmp_path / "c", tiny_gpt(), None)
    with pytest.raises(CheckpointError, match="tokenizer.json: missing"):
        load_checkpoint(tmp_path / "c")
    assert load_checkpoint(tmp_path / "c", need_tokenizer=False).tokenizer is None


def test_best_points_only_at_an_evaluated_checkpoint(tmp_path, tokenizer):
    """A checkpoint saved on Ctrl-C before any evaluation is `last`, never `best`: readers
    of a run directory then fall back to `last`."""

    run = RunDirectory(tmp_path / "run")
    model = tiny_gpt(vocab_size=tokenizer.vocab_size)
    run.save(3, model, tokenizer, run={"step": 3}, trainer_state={"step": 3}, is_best=False)
    assert (
        run.best() is None
        and resolve_checkpoint(tmp_path / "run").resolve() == (tmp_path / "run" / "step-0000003").resolve()
    )
    run.save(5, model, tokenizer, run={"step": 5}, trainer_state={"step": 5}, is_best=True)
    run.save(8, model, tokenizer, run={"step": 8}, trainer_state={"step": 8}, is_best=False)
    assert run.best().resolve().name == "step-0000005" and run.last().resolve().name == "step-0000008"
    assert resolve_checkpoint(tmp_path / "run").resolve().name == "step-0000005"


# torch's safe unpickler warns about the planted file's pickle protocol before refusing it
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_planted_pickles_are_never_run(tmp_path, tokenizer):
    marker = tmp_path / "PWNED"
    c = tmp_path / "c"
    save_checkpoint(c, tiny_gpt(), tokenizer, trainer_state={"step": 1})
    # 1. a pickled trainer state: weights_only refuses it
    plant_pickle(c / "trainer_state.pt", marker)
    with pytest.raises(CheckpointError, match="trainer_state.pt: refused"):
        load_trainer_state(c)
    # 2. pickled weights in place of the safetensors file
    plant_pickle(c / "model.safetensors", marker)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(c)
    # 3. only a pytorch_model.bin: minigpt says it never loads pickles
    (c / "model.safetensors").unlink()
    plant_pickle(c / "pytorch_model.bin", marker)
    with pytest.raises(CheckpointError, match="pytorch_model.bin is a pickle"):
        load_checkpoint(c)
    # 4. through the command line
    proc = run_cli("sample", "--checkpoint", str(c), "--max-new-tokens", "3")
    assert_one_line_error(proc, "pickle")
    assert not marker.exists()


def test_legit_trainer_state_loads_with_weights_only(tmp_path, tokenizer):
    m = tiny_gpt()
    opt = torch.optim.AdamW(m.parameters())
    m(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]])).loss.backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 5, "rng": {"torch": torch.get_rng_state()}}
    save_checkpoint(tmp_path / "c", m, tokenizer, trainer_state=state)
    back = load_trainer_state(tmp_path / "c")
    assert back["step"] == 5
    opt2 = torch.optim.AdamW(tiny_gpt().parameters())
    opt2.load_state_dict(back["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
