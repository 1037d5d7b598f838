"""Weight-only int8 (`minigpt/quantize.py`, `--quantize int8`, `minigpt quantize`), checked
against float64 recomputations and against the fp32 model it came from.

Oracles: the int8 product equals x @ (q * s)^T + b recomputed in float64 (the kernel only
rounds once more than that; int8-dynamic stays within the bound its activation step
implies); quantization error per weight is at most half a step; the
quantized GPT's logits stay close to fp32 and its bits per byte within 0.01 on a trained
model; the cached, batched sampler on int8 layers equals the naive no-cache one; a
checkpoint saved int8 loads back to the very same function.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from minigpt.checkpoint import save_checkpoint
from minigpt.cli import main
from minigpt.inference import load_for_inference
from minigpt.quantize import PACK_ROWS, DynamicInt8Linear, Int8Linear, quantize_model, quantize_weight
from minigpt.sampling import SamplingParams, generate

from .conftest import tiny_gpt

QWEN3 = {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "bias": False}
VARIANTS = {"gpt2": {}, "qwen3": QWEN3}


def test_quantize_weight_is_within_half_a_step_of_each_weight():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(37, 53, generator=g) * torch.logspace(-3, 1, 37)[:, None]  # rows of very different scale
    w[5] = 0.0
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and q.shape == w.shape and s.shape == (37,)
    assert int(q.abs().max()) <= 127
    err = (q.double() * s.double()[:, None] - w.double()).abs()
    assert bool((err <= s.double()[:, None] / 2 * (1 + 1e-6)).all())
    # Each non-zero row uses the full range (its largest weight maps to +-127): no step wasted.
    assert (q.abs().amax(1) == 127).sum() == 36 and int(q[5].abs().max()) == 0


@pytest.mark.parametrize(
    "dtype,shape",
    [
        (torch.float32, (1, 64)),
        (torch.float32, (2, 3, 48)),  # the CPU kernel, activations rounded to bf16 (K a multiple of 16)
        (torch.float32, (5, 33)),  # the kernel in fp32 (any K)
        (torch.bfloat16, (1, 64)),
        (torch.bfloat16, (6, 48)),  # the kernel in bf16 (K a multiple of 16)
        (torch.bfloat16, (1, 40)),
        (torch.bfloat16, (6, 40)),  # bf16 otherwise: the GEMM path
        (torch.float32, (3, 8, 64)),  # many rows: the GEMM path (bf16 products)
        (torch.float32, (20, 33)),  # many rows, fp32
        (torch.bfloat16, (17, 48)),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_equals_a_float64_recomputation(dtype, shape, bias):
    g = torch.Generator().manual_seed(1)
    k = shape[-1]
    lin = torch.nn.Linear(k, 70, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(70, k, generator=g) * 0.1)
        if bias:
            lin.bias.copy_(torch.randn(70, generator=g))
    m = Int8Linear.from_linear(lin).to(dtype)
    assert m.weight.dtype == torch.int8 and m.scales.dtype == dtype  # .to(dtype) casts scales, never the weight
    x = torch.randn(*shape, generator=g).to(dtype)
    y = m(x)
    assert y.dtype == dtype and y.shape == (*shape[:-1], 70)
    w64 = m.weight.double() * m.scales.double()[:, None]
    want = x.double() @ w64.T + (m.bias.double() if bias else 0)
    fp32_kernel = dtype == torch.float32 and k % 16 != 0
    tol = 1e-5 if fp32_kernel else 2e-2  # otherwise bf16 products (8-bit mantissas)
    torch.testing.assert_close(y.double(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("k", [64, 33])
def test_int8_kernel_path_equals_the_gemm_path(k):
    """The two weight-only paths, against each other: rows computed a few at a time (the
    CPU kernel) and the same rows among many (the GEMM) give the same numbers."""
    g = torch.Generator().manual_seed(3)
    m = Int8Linear.from_linear(torch.nn.Linear(k, 40))
    x = torch.randn(PACK_ROWS + 4, k, generator=g)
    few = torch.cat([m(x[i : i + 2]) for i in range(0, len(x), 2)])
    many = m(x)
    if k % 16:  # fp32 products on both paths
        torch.testing.assert_close(few, many, atol=2e-5, rtol=2e-5)
    else:  # bf16 products: the kernel rounds its result once, the GEMM once more after scaling
        torch.testing.assert_close(few, many, atol=4e-3 * many.abs().max().item(), rtol=1e-2)


def test_dynamic_int8_linear_one_row_and_many_rows_agree_and_stay_within_a_step():
    """int8-dynamic's two paths, against each other and float64: each row alone (fbgemm's
    kernel) equals it among others (the arithmetic written out on torch._int_mm) to float
    rounding, so a row's numbers do not depend on its batch; and each output is within
    sum_k |w_k| * a / 2 of the float64 product, a = its row's activation step."""
    g = torch.Generator().manual_seed(2)
    for k, bias in ((64, True), (48, False), (33, True)):
        lin = torch.nn.Linear(k, 50, bias=bias)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(50, k, generator=g) * 0.1)
        m = DynamicInt8Linear.from_linear(lin)
        x = torch.randn(7, k, generator=g) * torch.logspace(-2, 1, 7)[:, None] + torch.linspace(-1, 2, 7)[:, None]
        x[3] = x[3].abs()  # a row with no negative value (its zero point is 0)
        x[5] = 0.0
        batch = m(x)
        alone = torch.cat([m(x[i : i + 1]) for i in range(len(x))])
        assert batch.shape == (7, 50) and batch.dtype == torch.float32
        torch.testing.assert_close(alone, batch, atol=1e-5, rtol=1e-5)
        w64 = m.weight.double() * m.scales.double()[:, None]
        want = x.double() @ w64.T + (m.bias.double() if bias else 0)
        step = (x.double().clamp(min=0).amax(1) - x.double().clamp(max=0).amin(1)) / 127
        bound = w64.abs().sum(1)[None, :] * step[:, None] / 2 * 1.01 + 1e-5
        assert bool(((batch.double() - want).abs() <= bound).all())
        assert (batch.double() - want).abs().max() > 1e-6  # it did quantize the activations
    # The same state as weight-only int8: a state dict moves between the two.
    w_only = Int8Linear.from_linear(lin)
    w_only.load_state_dict(m.state_dict())
    assert torch.equal(w_only.weight, m.weight)


@pytest.mark.parametrize("method", ["int8", "int8-dynamic"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_quantized_gpt_logits_are_close_to_fp32(variant, method):
    ref = tiny_gpt(vocab_size=300, block_size=32, n_embd=64, n_head=4, **VARIANTS[variant])
    q = tiny_gpt(vocab_size=300, block_size=32, n_embd=64, n_head=4, **VARIANTS[variant])
    q = quantize_model(q, method)
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    assert q.transformer.wte.weight.dtype == torch.float32  # the embedding lookup stays float (tied head or not)
    idx = torch.randint(0, 300, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(idx).logits, q(idx).logits
    # int8 steps are ~0.4% of each row's largest weight: logits move by a small fraction of their spread
    # (int8-dynamic: and ~0.8% of each activation row's range).
    assert (a - b).abs().max() < (0.05 if method == "int8" else 0.1) * a.std()
    assert (a - b).abs().max() > 0  # and it is not the fp32 model in disguise


@pytest.mark.parametrize("method", ["int8", "int8-dynamic"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_batched_sampling_on_int8_equals_the_naive_path(variant, method):
    model = quantize_model(tiny_gpt(vocab_size=300, block_size=32, **VARIANTS[variant]), method)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    greedy = SamplingParams(temperature=0)
    fast = [s.tokens for s in generate(model, prompts, 12, greedy)]
    slow = [s.tokens for s in generate(model, prompts, 12, greedy, use_cache=False)]
    assert fast == slow


# ---- checkpoints and the command line ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, dataset_dir):
    """A GPT trained briefly on the small play (so bits per byte mean something)."""
    from minigpt.config import TrainConfig, apply_preset
    from minigpt.trainer import train

    out = tmp_path_factory.mktemp("q") / "run"
    cfg = TrainConfig()
    apply_preset(cfg, "cpu")
    settings = {
        "model": "gpt",
        "data": str(dataset_dir),
        "out": str(out),
        "device": "cpu",
        "sample_tokens": 0,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 32,
        "batch_size": 8,
        "max_steps": 30,
        "lr": 3e-3,
        "min_lr": 3e-4,
        "warmup_steps": 5,
        "eval_interval": 30,
        "eval_steps": 1,
        "log_interval": 30,
    }
    for k, v in settings.items():
        cfg.set(k, v)
    train(cfg, progress=False)
    return out


def _eval(capsys, *args) -> dict:
    assert main(["eval", *args, "--json", "--samples", "2", "--max-new-tokens", "8"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow  # trains a small model first
@pytest.mark.parametrize("method", ["int8", "int8-dynamic"])
def test_eval_bits_per_byte_of_int8_is_within_001_of_fp32(trained_run, capsys, method):
    fp32 = _eval(capsys, "--checkpoint", str(trained_run))
    int8 = _eval(capsys, "--checkpoint", str(trained_run), "--quantize", method)
    assert fp32["bits_per_byte"] < 6  # trained: far below the 8 bits of a uniform byte model
    assert abs(int8["bits_per_byte"] - fp32["bits_per_byte"]) < 0.01
    assert int8["bits_per_byte"] != fp32["bits_per_byte"]


@pytest.mark.slow  # trains a small model first
def test_saved_int8_checkpoint_round_trips_and_is_smaller(trained_run, tmp_path, capsys):
    assert main(["quantize", str(trained_run), str(tmp_path / "q8")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'q8'}"
    meta = json.loads((tmp_path / "q8" / "config.json").read_text())
    assert meta["quantization"]["method"] == "int8"
    with safe_open(str(tmp_path / "q8" / "model.safetensors"), "pt") as f:
        dtypes = {n: f.get_slice(n).get_dtype() for n in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert dtypes["transformer.h.0.attn.c_attn.weight"] == "I8" and dtypes["lm_head.weight"] == "I8"
    assert dtypes["transformer.h.0.attn.c_attn.scales"] == "F32" and dtypes["transformer.wte.weight"] == "F32"
    # A quarter of the bytes for every matrix (the float embedding stays; a tied head adds an int8 copy).
    fp32_bytes = (trained_run / "last" / "model.safetensors").stat().st_size
    assert (tmp_path / "q8" / "model.safetensors").stat().st_size < 0.6 * fp32_bytes

    # The saved file loads to exactly the function quantizing in memory gives.
    saved, _ = load_for_inference(tmp_path / "q8", "cpu")
    live, _ = load_for_inference(trained_run, "cpu", quantize="int8")
    idx = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(saved.model(idx).logits, live.model(idx).logits)
    # It keeps run.json, so eval finds its data, and scores as --quantize int8 does.
    a = _eval(capsys, "--checkpoint", str(tmp_path / "q8"))
    b = _eval(capsys, "--checkpoint", str(trained_run), "--quantize", "int8")
    assert a["bits_per_byte"] == b["bits_per_byte"]

    # sample: the same greedy text from both.
    outs = []
    for args in (["--checkpoint", str(tmp_path / "q8")], ["--checkpoint", str(trained_run), "--quantize", "int8"]):
        assert (
            main(["sample", *args, "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "20", "--json"]) == 0
        )
        outs.append(json.loads(capsys.readouterr().out)["ids"])
    assert outs[0] == outs[1] and len(outs[0]) == 20

    # int8-dynamic: the same file format, its method recorded, loaded back to its own layers.
    assert main(["quantize", str(trained_run), str(tmp_path / "dyn"), "--method", "int8-dynamic"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "dyn" / "config.json").read_text())["quantization"]["method"] == "int8-dynamic"
    saved, _ = load_for_inference(tmp_path / "dyn", "cpu")
    live, _ = load_for_inference(trained_run, "cpu", quantize="int8-dynamic")
    assert any(isinstance(m, DynamicInt8Linear) for m in saved.model.modules())
    with torch.no_grad():
        assert torch.equal(saved.model(idx).logits, live.model(idx).logits)


def test_int8_refusals_are_one_line(trained_run, tmp_path, capsys):
    from minigpt.models import build

    def fails(args, *needles):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        for n in needles:
            assert n in err, err

    ngram = build("ngram", {"vocab_size": 300, "order": 2})
    save_checkpoint(tmp_path / "ngram", ngram, None)
    fails(["quantize", str(tmp_path / "ngram"), str(tmp_path / "x")], "only GPT")
    fails(["sample", "--checkpoint", str(trained_run), "--quantize", "int4"], "--quantize")
    assert main(["quantize", str(trained_run), str(tmp_path / "q8")]) == 0
    capsys.readouterr()
    fails(["quantize", str(trained_run), str(tmp_path / "q8")], "already exists", "--force")
    fails(["quantize", str(tmp_path / "q8"), str(tmp_path / "q8b")], "already quantized")
    fails(["export-hf", str(tmp_path / "q8"), str(tmp_path / "hf")], "int8", "float checkpoint")
    # A tampered file: an int8 weight replaced by a float one of the same shape.
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "q8" / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["lm_head.weight"].float()
    save_file(tensors, str(tmp_path / "q8" / "model.safetensors"))
    fails(["sample", "--checkpoint", str(tmp_path / "q8"), "--prompt", "a"], "lm_head.weight")


@pytest.mark.parametrize("method", ["int8", "int8-dynamic"])
def test_server_batches_int8_rows_like_the_sampler_alone(tokenizer, method):
    """The server's continuous batching on int8 layers: two requests decoded in one batch get
    the texts the int8 model gives each alone (same seeds)."""
    pytest.importorskip("httpx")
    from minigpt.serve import ServeConfig, create_app

    from .test_serve import batch_two_requests, live

    model = quantize_model(tiny_gpt(vocab_size=tokenizer.vocab_size), method)
    app = create_app(model, tokenizer, ServeConfig(max_tokens_cap=64, max_batch=8, quantize=method), model_id="tiny")
    with live(app) as url:
        shared, got, want = batch_two_requests(url, app.state.engine, model, tokenizer)
    assert shared, "the two requests never shared a step"
    assert got == want
