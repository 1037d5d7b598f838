"""`minigpt export-hf` as every Hugging Face tool reads it, checked against transformers.

The oracles are transformers' own loaders: `AutoTokenizer` must give minigpt's ids for any
text (a property test over whitespace runs, newlines, digits, Unicode and the literal
`<|endoftext|>`), and `AutoModelForCausalLM`'s own loss (`labels=`) on AutoTokenizer's ids
must equal what `minigpt eval` reports on the same validation text. Both for the GPT-2
export (learned positions) and the Qwen3 export (the modern block), whose tokenizer
AutoTokenizer would otherwise rebuild with Qwen2's pre-tokenizer.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigpt.checkpoint import save_checkpoint
from minigpt.cli import main
from minigpt.hf import export_hf
from minigpt.tokenizer import EOT, Tokenizer

from .conftest import make_corpus, tiny_gpt

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

QWEN3 = {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "bias": False}
ARCHS = {"gpt2": {}, "qwen3": QWEN3}


def varied_text(seed: int = 0) -> str:
    """Play text plus the things GPT-2's and Qwen2's pre-tokenizers split differently:
    numbers (Qwen2 splits digits one by one), indented lines after a newline (Qwen2 glues
    the whitespace before a newline to it), identifiers with punctuation (Qwen2 glues
    `_config` together), tabs, trailing spaces, and non-Latin letters."""
    lines = []
    for i in range(300):
        lines.append(f"    {i * 37 % 1000} sshd_config - {i}.{i % 7} kB\t(x_{i % 5})  ")
        lines.append("NAME\n       ls - list, déjà vu — 東京 😀" if i % 3 == 0 else "  ")
    return make_corpus(600) + "\n".join(lines) + "\n"


def randomised(seed: int = 0, **kw) -> torch.nn.Module:
    """A tiny GPT with every parameter drawn at random (gains around 1), so that its
    logits depend on every token of the context."""
    model = tiny_gpt(vocab_size=kw.pop("vocab_size"), block_size=128, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = p.dim() == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if gain else 0.1) + (1.0 if gain else 0.0))
    return model.eval()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    # 800 entries: enough merges of digits, whitespace runs and identifiers that the two
    # pre-tokenizers give different ids (checked by test_qwen2_rules_would_split_differently).
    return Tokenizer.train(varied_text().splitlines(keepends=True), vocab_size=800)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tok):
    """{arch: (export directory, AutoTokenizer of it)} for both architectures."""
    out = {}
    for arch, kw in ARCHS.items():
        d = tmp_path_factory.mktemp(arch)
        save_checkpoint(d / "ckpt", randomised(vocab_size=tok.vocab_size, **kw), tok)
        export_hf(d / "ckpt", d / "hf")
        out[arch] = d / "hf", transformers.AutoTokenizer.from_pretrained(d / "hf")
    return out


# Fragments that stress pre-tokenization, mixed with arbitrary Unicode text.
FRAGMENTS = [
    "\n",
    "\n\n",
    "\r\n",
    " ",
    "   ",
    "\t",
    "       ",
    "123",
    "4567",
    "3.14",
    "sshd_config",
    "x_1",
    "'s",
    "'LL",
    "é",
    "東京",
    "😀",
    "\u00a0",
    "\u2028",
    "—",
    "<|endoftext|>",
    "<|endoftext",
    "|>",
    "ROMEO:",
    "déjà",
]
TEXTS = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=25).map("".join)


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_auto_tokenizer_gives_minigpts_ids(exports, tok, arch, text):
    _, auto = exports[arch]
    ids = tok.encode(text)
    # As a pipeline calls it (special tokens "added": none are, as in minigpt) and bare.
    assert auto(text)["input_ids"] == ids
    assert auto.encode(text, add_special_tokens=False) == ids
    assert auto.decode(ids) == text  # no clean-up of spaces: decoding gives the text back
    # A literal <|endoftext|> is text by default, as in minigpt; split_special_tokens=False
    # makes it the special token, as minigpt's allow_special=True does.
    assert auto(text, split_special_tokens=False)["input_ids"] == tok.encode(text, allow_special=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_export_writes_tokenizer_and_generation_configs(exports, tok, arch):
    hf_dir, auto = exports[arch]
    assert sorted(p.name for p in hf_dir.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert auto.eos_token == auto.bos_token == EOT
    assert auto.eos_token_id == auto.bos_token_id == tok.eot_id
    assert auto.model_max_length == 128
    gen = transformers.GenerationConfig.from_pretrained(hf_dir)
    assert gen.eos_token_id == gen.bos_token_id == gen.pad_token_id == tok.eot_id
    # generate() stops at <|endoftext|>: force it as the only likely token and see one step.
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        bias = torch.full((tok.vocab_size,), -1e4)
        bias[tok.eot_id] = 1e4
        hook = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
        ids = auto("Thou art", return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=10, do_sample=False)
        hook.remove()
    assert out[0, ids.shape[1] :].tolist() == [tok.eot_id]


def test_qwen2_rules_would_split_differently(tok):
    """The property test above can fail: the Qwen2 tokenizer transformers builds for a
    Qwen3 export without tokenizer_config.json encodes this vocabulary differently."""
    qwen2 = getattr(transformers, "Qwen2TokenizerFast", None) or transformers.Qwen2Tokenizer
    text = "NAME\n       sshd_config - 1234 kB"
    vocab = json.loads(tok.to_str())["model"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in vocab["merges"]]
    theirs = qwen2(vocab=vocab["vocab"], merges=[tuple(m) for m in merges])
    assert theirs.encode(text, add_special_tokens=False) != tok.encode(text)


# ---- transformers' loss on the export == minigpt eval -------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_loss_with_auto_tokenizer_equals_minigpt_eval(tmp_path, capsys, tok, arch):
    from minigpt.data import Dataset, prepare

    # One document whose validation tail (the last 0.5%) fits one window of the model, so
    # transformers scores it in one call with its own labels= loss.
    text = varied_text(seed=1)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    vf = 0.005
    prepare([corpus], tmp_path / "data", vocab_size=800, val_fraction=vf, progress=False)
    data = Dataset(tmp_path / "data")
    val_text = text[int(len(text) * (1 - vf)) :]
    assert 20 < len(data.tokens("val")) <= 128

    model = randomised(vocab_size=data.tokenizer.vocab_size, seed=3, **ARCHS[arch])
    save_checkpoint(tmp_path / "ckpt", model, data.tokenizer)
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--data",
                str(tmp_path / "data"),
                "--json",
                "--samples",
                "1",
                "--max-new-tokens",
                "1",
            ]
        )
        == 0
    )
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    enc = auto(val_text, return_tensors="pt", return_offsets_mapping=True)
    ids = enc["input_ids"]
    assert ids[0].tolist() == data.tokens("val").tolist()  # the validation split, as minigpt encoded it
    with torch.no_grad():
        loss = hf(ids, labels=ids).loss.item()  # mean nats over tokens 1..n-1
    n_targets = ids.shape[1] - 1
    assert ours["val_tokens"] == n_targets
    assert ours["val_loss"] == pytest.approx(loss, rel=1e-5)
    # Bits per byte: the nats of all targets over the bytes they stand for, i.e. the text
    # after the first token (which is context only).
    target_bytes = len(val_text[int(enc["offset_mapping"][0, 0, 1]) :].encode("utf-8"))
    assert ours["val_bytes"] == target_bytes
    bpb = loss * n_targets / math.log(2) / target_bytes
    assert ours["bits_per_byte"] == pytest.approx(bpb, rel=1e-5)
