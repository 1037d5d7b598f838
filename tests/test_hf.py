"""GPT-2 interop (`minigpt import-hf` / `export-hf`), checked against transformers' GPT-2.

The oracle is `transformers.GPT2LMHeadModel` itself: a randomly initialised GPT-2 saved
with `save_pretrained` must give the same logits after import, and a minigpt model must
give the same logits after `from_pretrained` of its export. Every parameter, biases and
LayerNorm gains included, is randomised away from its init (0 or 1) so that a dropped or
mis-transposed tensor cannot pass by accident, and the logits are checked to be O(1) so
that a 1e-4 tolerance means something.
"""

from __future__ import annotations

import json

import pytest
import torch

from minigpt.checkpoint import load_checkpoint, save_checkpoint
from minigpt.cli import main
from minigpt.tokenizer import EOT, Tokenizer, bytes_to_unicode

from .conftest import tiny_gpt

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ATOL = RTOL = 1e-4


def randomise_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn at random: matrices N(0, 0.1), biases N(0, 0.1), LayerNorm
    gains N(1, 0.2) (the last two are 0 and 1 at init, which would hide a bias that was
    dropped or a gain that was swapped for its bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_gain = p.dim() == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if is_gain else 0.1) + (1.0 if is_gain else 0.0))
    return model.eval()


def hf_gpt2(n_layer, n_head, n_embd, n_positions, vocab, *, seed=0, **kw) -> GPT2LMHeadModel:
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **kw,
    )
    torch.manual_seed(seed)
    return randomise_(GPT2LMHeadModel(cfg), seed)


def assert_same_logits(ours: torch.nn.Module, theirs: torch.nn.Module, vocab: int, T: int, seed: int = 0) -> None:
    """Both models on the same random ids [3, T] (T = the full context, so every learned
    position is used), fp32."""
    ids = torch.randint(0, vocab, (3, T), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a = ours(ids).logits
        b = theirs(ids).logits
    assert a.dtype == b.dtype == torch.float32
    assert b.std() > 0.1, "logits too small for the tolerance to mean anything"
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


# ---- import: parity with transformers --------------------------------------------------

CONFIGS = [
    # (n_layer, n_head, n_embd, n_positions, vocab), extra GPT2Config settings
    ((1, 1, 8, 16, 50), {}),
    ((2, 4, 32, 64, 300), {"tie_word_embeddings": False, "layer_norm_epsilon": 1e-3}),
    # reorder_and_upcast_attn only changes rounding, so it is accepted; it takes effect
    # only in transformers' eager attention, hence that implementation here.
    (
        (3, 2, 48, 32, 1000),
        {"activation_function": "gelu_pytorch_tanh", "reorder_and_upcast_attn": True, "attn_implementation": "eager"},
    ),
    # nanoGPT's exact (erf) GELU: our mlp "gelu_exact".
    ((2, 2, 32, 32, 300), {"activation_function": "gelu"}),
]


@pytest.mark.parametrize("shape,extra", CONFIGS, ids=["tiny", "untied-eps", "3layer", "exact-gelu"])
def test_import_matches_transformers(tmp_path, capsys, shape, extra):
    hf = hf_gpt2(*shape, **extra)
    hf.save_pretrained(tmp_path / "hf")
    code, out, err = cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    assert code == 0, err
    assert out.strip() == f"wrote {tmp_path / 'ckpt'}"

    ckpt = load_checkpoint(tmp_path / "ckpt", need_tokenizer=False)
    c = ckpt.model.config
    n_layer, n_head, n_embd, n_positions, vocab = shape
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == shape
    assert c.tie_weights == extra.get("tie_word_embeddings", True)
    assert c.layer_norm_eps == extra.get("layer_norm_epsilon", 1e-5)
    assert c.mlp == ("gelu_exact" if extra.get("activation_function") == "gelu" else "gelu")
    assert hf.config._attn_implementation == extra.get("attn_implementation", hf.config._attn_implementation)
    assert ckpt.tokenizer is None  # the HF directory had none
    assert_same_logits(ckpt.model, hf, vocab, n_positions)


def test_parity_check_catches_a_missed_transpose(tmp_path, capsys, monkeypatch):
    """The footgun the Conv1D comment warns about: attn.c_proj is square, so forgetting
    its transpose loads without a shape error. The parity check must notice."""
    import minigpt.hf

    monkeypatch.setattr(minigpt.hf, "CONV1D_WEIGHTS", ("attn.c_attn.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"))
    hf = hf_gpt2(2, 4, 32, 64, 300)
    hf.save_pretrained(tmp_path / "hf")
    code, _, err = cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    assert code == 0, err
    with pytest.raises(AssertionError, match="not close"):
        assert_same_logits(load_checkpoint(tmp_path / "ckpt", need_tokenizer=False).model, hf, 300, 64)


def _hf_dir_by_hand(tmp_path, hf: GPT2LMHeadModel, layout: str):
    """An HF directory in a layout that save_pretrained (transformers 5) no longer
    writes: bare GPT2Model names ("h.0..."), pickled, with the old mask buffers."""
    d = tmp_path / layout
    d.mkdir()
    cfg = hf.config.to_dict()
    cfg["architectures"] = ["GPT2Model"]
    (d / "config.json").write_text(json.dumps(cfg))
    sd = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    n = hf.config.n_positions
    if layout == "safetensors-bare":
        save_file(sd, str(d / "model.safetensors"))
    else:  # the hub's original gpt2 pytorch_model.bin: bare names plus the causal-mask buffers
        for i in range(hf.config.n_layer):
            sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
            sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        torch.save(sd, d / "pytorch_model.bin")
    return d


@pytest.mark.parametrize("layout", ["safetensors-bare", "pickle-bare-with-buffers", "sharded"])
def test_import_other_layouts(tmp_path, capsys, layout):
    hf = hf_gpt2(2, 2, 16, 24, 120, seed=1)
    if layout == "sharded":
        d = tmp_path / "hf"
        hf.save_pretrained(d, max_shard_size="10KB")
        assert (d / "model.safetensors.index.json").is_file() and not (d / "model.safetensors").exists()
    else:
        d = _hf_dir_by_hand(tmp_path, hf, layout)
    code, _, err = cli(capsys, "import-hf", str(d), str(tmp_path / "ckpt"))
    assert code == 0, err
    assert_same_logits(load_checkpoint(tmp_path / "ckpt", need_tokenizer=False).model, hf, 120, 24)


def test_import_refuses_existing_output_unless_forced(tmp_path, capsys):
    hf_gpt2(1, 1, 8, 16, 50).save_pretrained(tmp_path / "hf")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "keep.txt").write_text("mine")
    code, _, err = cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    assert_one_line_error(code, err, "already exists", "--force")
    assert (tmp_path / "ckpt" / "keep.txt").read_text() == "mine"
    code, _, err = cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "ckpt"), "--force")
    assert code == 0, err
    assert not (tmp_path / "ckpt" / "keep.txt").exists()
    load_checkpoint(tmp_path / "ckpt", need_tokenizer=False)


# ---- import: bad input ------------------------------------------------------------------


def _break(tmp_path, how: str):
    """An HF directory broken in one way; returns (dir, words the error must contain)."""
    d = tmp_path / "hf"
    hf_gpt2(1, 2, 8, 16, 50).save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    if how == "llama":
        cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
        needles = ["model_type", "'llama'", "GPT-2"]
    elif how == "no-config":
        (d / "config.json").unlink()
        return d, ["config.json", "missing"]
    elif how == "config-not-json":
        (d / "config.json").write_text("{not json")
        return d, ["config.json", "not valid JSON"]
    elif how == "no-weights":
        (d / "model.safetensors").unlink()
        return d, ["no weights", "model.safetensors", "pytorch_model.bin"]
    elif how == "truncated-weights":
        w = d / "model.safetensors"
        w.write_bytes(w.read_bytes()[:200])
        return d, ["model.safetensors", "truncated or corrupt"]
    elif how == "truncated-pickle":
        w = d / "model.safetensors"
        torch.save(hf_gpt2(1, 2, 8, 16, 50).state_dict(), d / "pytorch_model.bin")
        w.unlink()
        (d / "pytorch_model.bin").write_bytes((d / "pytorch_model.bin").read_bytes()[:300])
        return d, ["pytorch_model.bin", "unreadable"]
    elif how == "relu":
        cfg["activation_function"] = "relu"
        needles = ["activation_function", "'relu'", "gelu_new"]
    elif how == "n-inner":
        cfg["n_inner"] = 24
        needles = ["n_inner", "24", "4 * n_embd"]
    elif how == "inverse-layer-scaling":
        cfg["scale_attn_by_inverse_layer_idx"] = True
        needles = ["scale_attn_by_inverse_layer_idx"]
    elif how == "unscaled-attention":
        cfg["scale_attn_weights"] = False
        needles = ["scale_attn_weights"]
    elif how == "shape-mismatch":
        cfg["n_embd"] = 16
        needles = ["shape", "config.json"]
    elif how == "classifier":
        cfg["architectures"] = ["GPT2ForSequenceClassification"]
        needles = ["architecture", "GPT2ForSequenceClassification"]
    elif how == "extra-tensor":
        from safetensors.torch import load_file

        sd = load_file(d / "model.safetensors")
        sd["score.weight"] = torch.zeros(2, 8)
        save_file(sd, str(d / "model.safetensors"))
        return d, ["model.safetensors", "unexpected tensor", "score.weight"]
    elif how == "untied-without-head":
        cfg["tie_word_embeddings"] = False
        needles = ["missing tensor", "lm_head.weight", "tie_word_embeddings"]
    (d / "config.json").write_text(json.dumps(cfg))
    return d, needles


BROKEN = [
    "llama",
    "no-config",
    "config-not-json",
    "no-weights",
    "truncated-weights",
    "truncated-pickle",
    "relu",
    "n-inner",
    "inverse-layer-scaling",
    "unscaled-attention",
    "shape-mismatch",
    "classifier",
    "extra-tensor",
    "untied-without-head",
]


@pytest.mark.parametrize("how", BROKEN)
def test_import_refuses_bad_directory(tmp_path, capsys, how):
    d, needles = _break(tmp_path, how)
    code, out, err = cli(capsys, "import-hf", str(d), str(tmp_path / "ckpt"))
    assert_one_line_error(code, err, *needles)
    assert out == ""
    assert not (tmp_path / "ckpt").exists()


def test_import_refuses_missing_directory_in_a_real_process(tmp_path):
    from .conftest import assert_one_line_error as assert_one_line_error_proc
    from .conftest import run_cli

    proc = run_cli("import-hf", str(tmp_path / "nope"), str(tmp_path / "ckpt"))
    assert_one_line_error_proc(proc, "nope", "not found")


class _PlantedPayload:
    """Unpickling this calls open(marker, "w"): a harmless stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_import_refuses_malicious_pickle(tmp_path, capsys):
    d = tmp_path / "hf"
    hf_gpt2(1, 1, 8, 16, 50).save_pretrained(d)
    (d / "model.safetensors").unlink()

    # First show the payload is live: a plain unpickle does create its marker file.
    live = tmp_path / "proof.bin"
    torch.save({"x": _PlantedPayload(tmp_path / "proof-marker")}, live)
    torch.load(live, weights_only=False)["x"].close()  # unpickling returned the file open() made
    assert (tmp_path / "proof-marker").exists()

    marker = tmp_path / "pwned"
    torch.save({"transformer.wte.weight": _PlantedPayload(marker)}, d / "pytorch_model.bin")
    code, _, err = cli(capsys, "import-hf", str(d), str(tmp_path / "ckpt"))
    assert_one_line_error(code, err, "pytorch_model.bin", "refused", "other than tensors")
    assert "weights_only=False" not in err  # torch's advice to turn the check off is not passed on
    assert not marker.exists()
    assert not (tmp_path / "ckpt").exists()


def test_import_refuses_non_tensor_pickle(tmp_path, capsys):
    d = tmp_path / "hf"
    hf_gpt2(1, 1, 8, 16, 50).save_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save([torch.zeros(3)], d / "pytorch_model.bin")  # tensors, but not a name -> tensor mapping
    code, _, err = cli(capsys, "import-hf", str(d), str(tmp_path / "ckpt"))
    assert_one_line_error(code, err, "pytorch_model.bin", "not a state dict")


# ---- export: parity with transformers ------------------------------------------------------


EXPORTS = [(bias, tie, "gelu") for bias in (True, False) for tie in (True, False)] + [(False, True, "gelu_exact")]


# The last is the nanogpt-cpu preset's block: nanoGPT's exact GELU, no biases.
@pytest.mark.parametrize(
    "bias,tie,mlp", EXPORTS, ids=[f"{'' if b else 'no'}bias-{'tied' if t else 'untied'}-{m}" for b, t, m in EXPORTS]
)
def test_export_matches_transformers(tmp_path, capsys, tokenizer, bias, tie, mlp):
    import tokenizers

    ours = randomise_(tiny_gpt(vocab_size=300, bias=bias, tie_weights=tie, layer_norm_eps=1e-4, mlp=mlp), seed=2)
    save_checkpoint(tmp_path / "ckpt", ours, tokenizer)
    code, out, err = cli(capsys, "export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf"))
    assert code == 0, err
    assert out.strip() == f"wrote {tmp_path / 'hf'}"
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]

    hf, info = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert hf.config.tie_word_embeddings == tie
    assert hf.config.eos_token_id == hf.config.bos_token_id == tokenizer.eot_id
    assert hf.config.layer_norm_epsilon == 1e-4
    assert hf.config.activation_function == {"gelu": "gelu_new", "gelu_exact": "gelu"}[mlp]
    assert_same_logits(ours, hf.eval(), 300, 32)

    # HF's tokenizer library, and transformers' AutoTokenizer on top of it, read the
    # tokenizer.json and encode like ours.
    theirs = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for s in ["Thou art my sweet rose.", "  héllo\n\tworld — 123", ""]:
        assert theirs.encode(s, add_special_tokens=False).ids == tokenizer.encode(s)
        assert auto.encode(s, add_special_tokens=False) == tokenizer.encode(s)

    # And back: importing the export gives the same function again (zero biases if bias=False).
    code, _, err = cli(capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "back"))
    assert code == 0, err
    back = load_checkpoint(tmp_path / "back")
    assert back.tokenizer.encode("Thou art") == tokenizer.encode("Thou art")
    assert_same_logits(back.model, ours, 300, 32)


def test_export_accepts_run_directory_and_force(tmp_path, capsys):
    from minigpt.checkpoint import RunDirectory

    run = RunDirectory(tmp_path / "run")
    model = randomise_(tiny_gpt(vocab_size=64), seed=3)
    run.save(5, model, None, run={}, trainer_state=None, is_best=True)
    # Never replace the directory the checkpoint lives in, --force or not.
    code, _, err = cli(capsys, "export-hf", str(tmp_path / "run"), str(tmp_path / "run"), "--force")
    assert_one_line_error(code, err, "holds the input")
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()

    (tmp_path / "hf").mkdir()
    code, _, err = cli(capsys, "export-hf", str(tmp_path / "run"), str(tmp_path / "hf"))
    assert_one_line_error(code, err, "already exists", "--force")
    code, _, err = cli(capsys, "export-hf", str(tmp_path / "run"), str(tmp_path / "hf"), "--force")
    assert code == 0, err
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert hf.config.eos_token_id is None  # no tokenizer, so no <|endoftext|> id to name
    assert_same_logits(model, hf.eval(), 64, 32)


@pytest.mark.parametrize(
    "pos,needles",
    [
        ("sinusoidal", ["sinusoidal", "learned", "wpe", "sqrt(n_embd)"]),
        ("rope", ["rope", "rotate q and k", "GPT-2"]),
    ],
)
def test_export_refuses_other_positions(tmp_path, capsys, pos, needles):
    save_checkpoint(tmp_path / "ckpt", tiny_gpt(vocab_size=64, pos_encoding=pos), None)
    code, out, err = cli(capsys, "export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf"))
    assert_one_line_error(code, err, "cannot export", *needles)
    assert not (tmp_path / "hf").exists()


def test_export_refuses_a_baseline(tmp_path, capsys):
    save_checkpoint(tmp_path / "ckpt", tiny_gpt(vocab_size=64), None)
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**meta, "model_type": "lstm"}))
    code, _, err = cli(capsys, "export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf"))
    assert_one_line_error(code, err, "model_type 'lstm'", "only GPT checkpoints")


def test_export_refuses_missing_checkpoint(tmp_path, capsys):
    code, _, err = cli(capsys, "export-hf", str(tmp_path / "nope"), str(tmp_path / "hf"))
    assert_one_line_error(code, err, "not found")


# ---- GPT-2's tokenizer.json ------------------------------------------------------------------

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("o", "u"), ("Ġ", "w"), ("o", "r")]


def gpt2_layout_tokenizer_json() -> dict:
    """A small tokenizer.json in the exact layout of the hub's gpt2/tokenizer.json: the
    256 byte characters first (in GPT-2's byte order), then one entry per merge, and
    `<|endoftext|>` as the last id (like GPT-2's 50256), plus GPT-2's ByteLevel
    pre-tokenizer / post-processor / decoder settings."""
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    eot = len(vocab)
    vocab[EOT] = eot
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": eot,
                "content": EOT,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "add_prefix_space": True, "trim_offsets": False},
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in MERGES],
        },
    }


TEXTS = ["the tin out, the world", "  héllo\n\tthe ou 日本 🙂", "in the inn, a wor"]


def test_reads_gpt2_tokenizer_json(tmp_path, capsys):
    from transformers import GPT2TokenizerFast

    tok_json = gpt2_layout_tokenizer_json()
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok_json))
    # The independent oracle: transformers' GPT-2 tokenizer built from the classic
    # vocab.json + merges.txt pair (how GPT-2 was first distributed).
    vm = tmp_path / "vocab-merges"
    vm.mkdir()
    (vm / "vocab.json").write_text(json.dumps(tok_json["model"]["vocab"]))
    (vm / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    oracle = GPT2TokenizerFast.from_pretrained(vm)

    ours = Tokenizer.load(tmp_path / "tokenizer.json")
    assert ours.vocab_size == 256 + len(MERGES) + 1
    assert ours.eot_id == ours.vocab_size - 1 == oracle.eos_token_id
    for s in TEXTS:
        ids = ours.encode(s)
        assert ids == oracle.encode(s, add_special_tokens=False)
        assert any(i >= 256 for i in ids) or not s  # merges were applied
        assert ours.decode(ids) == s
    assert ours.encode(f"a{EOT}b", allow_special=True) == ours.encode("a") + [ours.eot_id] + ours.encode("b")

    # A GPT-2 directory with this tokenizer.json imports with it.
    d = tmp_path / "hf"
    hf_gpt2(1, 2, 8, 16, ours.vocab_size).save_pretrained(d)
    (d / "tokenizer.json").write_text(json.dumps(tok_json))
    code, _, err = cli(capsys, "import-hf", str(d), str(tmp_path / "ckpt"))
    assert code == 0, err
    imported = load_checkpoint(tmp_path / "ckpt").tokenizer
    assert [imported.encode(s) for s in TEXTS] == [ours.encode(s) for s in TEXTS]


def test_import_refuses_tokenizer_larger_than_model(tmp_path, capsys):
    d = tmp_path / "hf"
    hf_gpt2(1, 1, 8, 16, 100).save_pretrained(d)
    (d / "tokenizer.json").write_text(json.dumps(gpt2_layout_tokenizer_json()))
    code, _, err = cli(capsys, "import-hf", str(d), str(tmp_path / "ckpt"))
    assert_one_line_error(code, err, "tokenizer.json", "265 tokens", "vocab_size is 100")
