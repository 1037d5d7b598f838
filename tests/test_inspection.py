"""Attention maps, head statistics and the `attention` / `heads` commands.

The oracles: attention rows are probability distributions over the past; the maps equal
the model's explicit attention path (and a float64 recomputation from the parameters);
the statistics give known answers on hand-made matrices; and a two-layer model wired by
hand (a previous-token head feeding an induction head) is found by `minigpt heads`.
"""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minigpt.checkpoint import save_checkpoint
from minigpt.cli import main
from minigpt.errors import MiniGPTError
from minigpt.inspection import (
    AttentionMaps,
    attention_entropy,
    attention_maps,
    first_token_score,
    format_attention,
    induction_scores,
    mean_attention_distance,
    previous_token_score,
    write_html,
    write_png,
)
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizer import Tokenizer
from minigpt.viewer import visible_token

TEXT = "The cat sat on the mat.\nThe dog sat on the log <b>&amp;</b>."


# ---- fixtures: a tiny tokenizer, random models, and a model wired by hand -------------------------


@pytest.fixture(scope="module")
def tok():
    corpus = ["the cat sat on the mat\n", "the dog sat on the log\n"] * 20
    t = Tokenizer.train(corpus, vocab_size=260)
    assert t.vocab_size == 260
    return t


def random_gpt(
    vocab_size, *, pos_encoding="learned", block_size=64, n_layer=2, n_head=2, n_embd=32, sharpen=1.0, seed=0
):
    """A randomly initialised GPT. `sharpen` scales the q/k/v projection so attention is
    peaked (at GPT-2's init std every row is nearly uniform, which tests too little)."""
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=vocab_size,
        block_size=block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        pos_encoding=pos_encoding,
    )
    model = GPT(cfg).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(sharpen)
    return model


def induction_circuit(vocab_size: int, block_size: int) -> GPT:
    """Two layers, two heads each, wired by hand into an induction circuit.

    The residual stream has three one-hot blocks: [token (V) | position (T) | previous token (V)].
      L0H0, a previous-token head: query t reads its position and maps it to slot t-1; key
            s reads position s; so q_t . k_s is large only for s = t-1. Its value is the
            key's token, which c_proj writes into the "previous token" block.
      L1H0, an induction head: query = the current token, key = the previous-token block,
            so a token attends to positions whose *previous* token equals it: [A][B] ... [A] -> [B].
    Everything else (the other heads' q/k, all MLPs) is zero: those heads spread their
    attention evenly and write nothing. LayerNorm only rescales the stream (by
    sqrt(C / number of ones)), and subtracts the same small mean from every position,
    which shifts all of a query's scores equally and so leaves the softmax unchanged.
    """
    V, T = vocab_size, block_size
    C = 2 * V + T + (T % 2)  # even, so n_head = 2 divides it; head size C/2 >= V and >= T
    cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=C, bias=False, tie_weights=False)
    model = GPT(cfg).eval()
    tok_blk, pos_blk, prev_blk = 0, V, V + T  # where each block starts
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.zero_()
        model.transformer.wte.weight[torch.arange(V), tok_blk + torch.arange(V)] = 1.0
        model.transformer.wpe.weight[torch.arange(T), pos_blk + torch.arange(T)] = 1.0
        # c_attn.weight is [3C, C] (out, in): rows 0..C-1 make q, C..2C-1 k, 2C..3C-1 v;
        # head 0 owns the first C/2 rows of each.
        a0 = model.transformer.h[0].attn
        for t in range(1, T):
            a0.c_attn.weight[t - 1, pos_blk + t] = 1.0  # q_t = e_{t-1}
        for s in range(T):
            a0.c_attn.weight[C + s, pos_blk + s] = 1.0  # k_s = e_s
        for i in range(V):
            a0.c_attn.weight[2 * C + i, tok_blk + i] = 1.0 / math.sqrt(C / 2)  # v_s = token one-hot, undoing LN's scale
            a0.c_proj.weight[prev_blk + i, i] = 1.0  # write it into the previous-token block
        a1 = model.transformer.h[1].attn
        for i in range(V):
            a1.c_attn.weight[i, tok_blk + i] = 2.0  # q = current token
            a1.c_attn.weight[C + i, prev_blk + i] = 1.0  # k = previous token
    return model


@pytest.fixture(scope="module")
def circuit(tok):
    return induction_circuit(tok.vocab_size, 64)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, tok, circuit):
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "circuit", circuit, tok))


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ---- the maps ----------------------------------------------------------------------------------


def test_rows_are_distributions_over_the_past(tok):
    model = random_gpt(tok.vocab_size, sharpen=30.0)
    maps = attention_maps(model, tok, TEXT)
    T = len(tok.encode(TEXT))
    assert maps.weights.shape == (2, 2, T, T) and maps.weights.dtype == np.float32
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    assert np.all(maps.weights >= 0)
    assert np.all(np.triu(maps.weights, k=1) == 0), "a token attended to the future"
    assert maps.weights.max() > 0.9, "sharpened model should have peaked rows (else this test checks little)"
    assert maps.ids == tok.encode(TEXT)
    assert maps.tokens == [tok.token_str(i) for i in maps.ids] and "".join(maps.tokens) == TEXT
    assert maps.dropped == 0 and not maps.cropped


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_maps_equal_the_explicit_attention_path(tok, pos_encoding):
    model = random_gpt(tok.vocab_size, pos_encoding=pos_encoding, sharpen=10.0, n_layer=3)
    maps = attention_maps(model, tok, TEXT)
    with torch.no_grad():
        out = model(torch.tensor([tok.encode(TEXT)]), return_attention=True)
    expected = torch.stack(out.attentions, dim=1)[0].numpy()  # [L, H, T, T]
    np.testing.assert_allclose(maps.weights, expected, rtol=0, atol=1e-7)


def test_layer0_equals_a_float64_recomputation(tok):
    """An oracle independent of model.py's attention code: layer 0 from the parameters."""
    model = random_gpt(tok.vocab_size, sharpen=10.0)
    maps = attention_maps(model, tok, TEXT)
    ids = torch.tensor(tok.encode(TEXT))
    T, C, H = len(ids), model.config.n_embd, model.config.n_head
    sd = {k: v.double() for k, v in model.state_dict().items()}
    x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:T]
    x = F.layer_norm(x, (C,), sd["transformer.h.0.ln_1.weight"], sd["transformer.h.0.ln_1.bias"], eps=1e-5)
    qkv = x @ sd["transformer.h.0.attn.c_attn.weight"].T + sd["transformer.h.0.attn.c_attn.bias"]
    q, k = (t.view(T, H, C // H).transpose(0, 1) for t in qkv.split(C, dim=-1)[:2])  # [H, T, D]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(C // H)
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    np.testing.assert_allclose(maps.weights[0], scores.softmax(-1).numpy(), atol=1e-5)


def test_long_prompt_is_cropped_to_its_last_block(tok):
    model = random_gpt(tok.vocab_size, block_size=16)
    text = TEXT * 3
    ids = tok.encode(text)
    maps = attention_maps(model, tok, text)
    assert maps.ids == ids[-16:] and maps.dropped == len(ids) - 16 and maps.cropped
    # The cropped maps are exactly the maps of the kept tokens on their own.
    with torch.no_grad():
        out = model(torch.tensor([ids[-16:]]), return_attention=True)
    np.testing.assert_allclose(maps.weights[1], out.attentions[1][0].numpy(), atol=1e-7)


def test_model_is_left_untouched(tok):
    model = random_gpt(tok.vocab_size)
    model.train()
    attention_maps(model, tok, TEXT)
    induction_scores(model, seq_len=8)
    assert model.training, "mode must be restored"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_api_input(tok):
    model = random_gpt(tok.vocab_size)
    with pytest.raises(MiniGPTError, match="empty"):
        attention_maps(model, tok, "")
    with pytest.raises(MiniGPTError, match="no tokenizer"):
        attention_maps(model, None, TEXT)
    with pytest.raises(MiniGPTError, match="the model is on cpu, not cuda"):
        attention_maps(model, tok, TEXT, device="cuda")  # never moves the caller's model
    assert attention_maps(model, tok, TEXT, device="cpu").weights.shape[0] == 2

    class LSTM(torch.nn.Module):  # a model that declares it has no attention (models.LanguageModel)
        model_type = "lstm"
        has_attention = False

    with pytest.raises(MiniGPTError, match="an LSTM has no attention"):
        attention_maps(LSTM(), tok, TEXT)
    with pytest.raises(MiniGPTError, match="out of range"):
        format_attention(attention_maps(model, tok, TEXT), layer=2)


def test_npz_round_trip_keeps_awkward_tokens(tok, tmp_path):
    model = random_gpt(tok.vocab_size, sharpen=10.0)
    text = 'x "quoted" é\ttab </script>\x00'  # ends with a NUL, which numpy's str arrays would drop
    maps = attention_maps(model, tok, text)
    path = maps.save(tmp_path / "att.npz")
    back = AttentionMaps.load(path)
    assert back.tokens == maps.tokens and back.ids == maps.ids and back.dropped == 0
    np.testing.assert_array_equal(back.weights, maps.weights)
    with np.load(path, allow_pickle=False) as z:  # the documented arrays, readable without minigpt
        assert z["weights"].shape == maps.weights.shape and z["weights"].dtype == np.float32
        assert list(z["tokens"])[:-1] == maps.tokens[:-1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_maps_equal_cpu_maps(tok):
    model = random_gpt(tok.vocab_size, pos_encoding="rope", sharpen=10.0)
    cpu = attention_maps(model, tok, TEXT)
    gpu = attention_maps(model.to("cuda"), tok, TEXT, device="cuda")
    assert gpu.weights.dtype == np.float32
    np.testing.assert_allclose(gpu.weights, cpu.weights, atol=1e-4)
    assert induction_scores(model, seq_len=8).shape == (2, 2)


# ---- statistics on matrices with known answers --------------------------------------------------


def test_statistics_of_known_matrices():
    T = 6
    t = np.arange(T)
    uniform = np.tril(np.ones((T, T))) / (t + 1)[:, None]  # row t: 1/(t+1) on each of t+1 keys
    shift = np.eye(T, k=-1)
    shift[0, 0] = 1  # row t -> t-1 (row 0 can only look at itself)
    sink = np.zeros((T, T))
    sink[:, 0] = 1
    rows = slice(1, None)  # the statistics skip row 0
    np.testing.assert_allclose(attention_entropy(uniform), np.log(t + 1)[rows].mean())
    np.testing.assert_allclose(mean_attention_distance(uniform), (t / 2)[rows].mean())
    np.testing.assert_allclose(previous_token_score(uniform), (1 / (t + 1))[rows].mean())
    np.testing.assert_allclose(first_token_score(uniform), (1 / (t + 1))[rows].mean())
    assert attention_entropy(shift) == 0 and mean_attention_distance(shift) == 1
    assert previous_token_score(shift) == 1 and first_token_score(shift) == pytest.approx(1 / (T - 1))
    assert first_token_score(sink) == 1 and mean_attention_distance(sink) == pytest.approx(t[rows].mean())
    assert previous_token_score(np.eye(T)) == 0 and attention_entropy(np.eye(T)) == 0
    stacked = np.stack([uniform, shift, sink])[None]  # [1, 3, T, T]: one result per head
    np.testing.assert_allclose(
        previous_token_score(stacked), [[previous_token_score(m) for m in (uniform, shift, sink)]]
    )


def test_hand_built_previous_token_and_induction_heads(tok, circuit):
    stats = attention_maps(circuit, tok, TEXT).head_stats()
    assert stats.prev_token[0, 0] > 0.99
    assert stats.previous_token_heads() == [(0, 0)]
    ind = induction_scores(circuit, seq_len=16, exclude_ids=[tok.eot_id])
    # The one miss: the second r_0 also matches position 0, whose "previous token" is itself.
    assert ind[1, 0] > 0.95
    for l, h in [(0, 0), (0, 1), (1, 1)]:
        assert ind[l, h] < 0.15
    np.testing.assert_array_equal(ind, induction_scores(circuit, seq_len=16, exclude_ids=[tok.eot_id]))  # seeded


def test_induction_score_is_low_for_a_random_model(tok):
    model = random_gpt(tok.vocab_size, n_layer=2, n_head=4)
    ind = induction_scores(model, seed=1)
    # Near-uniform attention over ~32..64 keys: about ln(2)/32 = 0.02 per head.
    assert ind.shape == (2, 4) and np.all(ind < 0.1) and np.all(ind > 0)


# ---- terminal rendering ------------------------------------------------------------------------


def test_terminal_heatmap_lists_each_tokens_top_keys(tok):
    maps = attention_maps(random_gpt(tok.vocab_size, sharpen=30.0), tok, TEXT)
    text = format_attention(maps, layer=1, head=0, top=2)
    header, *lines = text.splitlines()
    assert header.startswith("layer 1, head 0") and len(lines) == len(maps)
    for t, line in enumerate(lines):
        row = np.round(maps.weights[1, 0, t].astype(np.float64), 6)
        best = int(np.flatnonzero(row == row.max())[0])  # ties (to 1e-6) are listed in position order
        m = re.search(r"-> (.*?)@(\d+) (\d\.\d\d)", line)
        assert m and int(m.group(2)) == best and m.group(1) == f"'{visible_token(maps.tokens[best])}'"
        assert float(m.group(3)) == pytest.approx(maps.weights[1, 0, t, best], abs=0.005)
    assert format_attention(maps).splitlines()[0].startswith("mean over all 2 layers x 2 heads")


# ---- the commands -----------------------------------------------------------------------------


def test_heads_command_names_the_hand_built_heads(capsys, ckpt_dir):
    rc, out, err = run_cli(capsys, "heads", "--checkpoint", ckpt_dir, "--device", "cpu")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert [l for l in lines if l.startswith("likely previous-token")] == [
        "likely previous-token heads (score > 0.5): L0H0 (1.00)"
    ]
    ind_line = [l for l in lines if l.startswith("likely induction")]
    assert len(ind_line) == 1 and re.fullmatch(r"likely induction heads \(score > 0\.3\): L1H0 \(0\.9\d\)", ind_line[0])

    rc, out, _ = run_cli(capsys, "heads", "--checkpoint", ckpt_dir, "--device", "cpu", "--json", "--seed", "3")
    report = json.loads(out)
    assert rc == 0 and report["previous_token_heads"] == [[0, 0]] and report["induction_heads"] == [[1, 0]]
    assert [(r["layer"], r["head"]) for r in report["heads"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert report["heads"][0]["prev_token"] > 0.99 and report["heads"][0]["mean_distance"] == pytest.approx(1, abs=0.01)


def test_attention_command_writes_consistent_files(capsys, ckpt_dir, tok, circuit, tmp_path):
    npz, html, png = tmp_path / "a.npz", tmp_path / "a.html", tmp_path / "a.png"
    rc, out, err = run_cli(
        capsys,
        "attention",
        "--checkpoint",
        ckpt_dir,
        "--prompt",
        TEXT,
        "--layer",
        "0",
        "--head",
        "0",
        "--npz",
        str(npz),
        "--html",
        str(html),
        "--png",
        str(png),
        "--device",
        "cpu",
    )
    assert rc == 0 and err == ""
    # The previous-token head: every token's top key is the one before it.
    lines = out.splitlines()
    assert lines[0].startswith("layer 0, head 0")
    for t in range(1, len(tok.encode(TEXT))):
        assert re.search(rf"-> \S.*?@{t - 1} 1\.00", lines[1 + t]), lines[1 + t]
    saved = AttentionMaps.load(npz)
    np.testing.assert_array_equal(saved.weights, attention_maps(circuit, tok, TEXT).weights)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.stat().st_size > 0


def test_files_are_written_even_when_the_terminal_pipe_closes(ckpt_dir, tmp_path):
    """`minigpt attention ... --html F | head`: the reader leaving early must not cost a file."""
    import subprocess

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minigpt.cli",
            "attention",
            "--checkpoint",
            str(ckpt_dir),
            "--prompt",
            TEXT,
            "--npz",
            "a.npz",
            "--html",
            "a.html",
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before anything is printed
    err = proc.stderr.read()
    assert proc.wait() == 0 and "Traceback" not in err, err
    assert (tmp_path / "a.npz").stat().st_size > 0 and (tmp_path / "a.html").stat().st_size > 0


def test_long_prompt_note_on_stderr(capsys, ckpt_dir, tok, tmp_path):
    text = TEXT * 4
    n = len(tok.encode(text))
    rc, out, err = run_cli(
        capsys,
        "attention",
        "--checkpoint",
        ckpt_dir,
        "--prompt",
        text,
        "--npz",
        str(tmp_path / "c.npz"),
        "--device",
        "cpu",
    )
    assert rc == 0
    assert err.splitlines() == [
        f"minigpt attention: note: the prompt is {n} tokens; cropped to its last 64 (block_size)"
    ]
    assert AttentionMaps.load(tmp_path / "c.npz").ids == tok.encode(text)[-64:]


def test_html_is_self_contained_and_carries_the_weights(tok, tmp_path):
    model = random_gpt(tok.vocab_size, sharpen=10.0)
    evil = 'a</script><script>alert("x")</script><!-- & "\''
    maps = attention_maps(model, tok, evil)
    page = write_html(maps, tmp_path / "v.html").read_text(encoding="utf-8")
    assert page.count("</script>") == 2, "a token closed a script element"  # the data block and the code
    assert not re.search(r"https?:|ftp:|//[\w.-]+\.[a-z]{2,}/", page, re.I), "external URL in the viewer"
    assert re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]*)""", page) == ["data:,"]  # only the empty favicon
    blob = re.search(r'<script type="application/json" id="minigpt-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(blob)
    assert data["tokens"] == maps.tokens
    for t in range(len(maps)):
        np.testing.assert_allclose(data["weights"][1][1][t], maps.weights[1, 1, t, : t + 1], atol=1e-6)


def test_png_without_matplotlib_says_how_to_install(tok, tmp_path, monkeypatch):
    maps = attention_maps(random_gpt(tok.vocab_size), tok, TEXT)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MiniGPTError, match=r"pip install 'minigpt-toolkit\[viz\]'"):
        write_png(maps, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_png_flag_without_matplotlib_is_exit_2(capsys, ckpt_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    rc, out, err = run_cli(
        capsys, "attention", "--checkpoint", ckpt_dir, "--prompt", "hi", "--png", str(tmp_path / "x.png")
    )
    assert rc == 2 and out == ""
    assert err.splitlines() == [
        "minigpt attention: error: --png needs matplotlib, which is not installed: pip install 'minigpt-toolkit[viz]'"
    ]


@pytest.fixture(scope="module")
def odd_checkpoints(tmp_path_factory, tok):
    """A GPT checkpoint without a tokenizer, and one that claims to be an LSTM."""
    root = tmp_path_factory.mktemp("odd")
    model = random_gpt(tok.vocab_size)
    no_tok = save_checkpoint(root / "no-tok", model, None)
    lstm = save_checkpoint(root / "lstm", model, tok)
    cfg = json.loads((lstm / "config.json").read_text())
    cfg["model_type"] = "lstm"
    (lstm / "config.json").write_text(json.dumps(cfg))
    return {"no-tok": str(no_tok), "lstm": str(lstm), "missing": str(root / "nope")}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["attention", "--prompt", ""], "prompt is empty"),
        (["attention", "--prompt", "hi", "--layer", "2"], "--layer 2 is out of range: this model has 2 layers (0..1)"),
        (["attention", "--prompt", "hi", "--head", "-1"], "--head -1 is out of range"),
        (["attention", "--prompt", "hi", "--top", "0"], "--top must be >= 1"),
        (["attention", "--prompt", "hi", "@no-tok"], "tokenizer.json: missing"),
        (["attention", "--prompt", "hi", "@lstm"], "an LSTM has no attention"),
        (["attention", "--prompt", "hi", "@missing"], "checkpoint not found"),
        (["heads", "@lstm"], "an LSTM has no attention"),
        (["heads", "--prompt", ""], "--prompt is empty"),
        (["heads", "--prompt", "a"], "single token"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, ckpt_dir, odd_checkpoints, argv, message):
    ckpt = ckpt_dir
    if argv[-1].startswith("@"):
        ckpt = odd_checkpoints[argv.pop()[1:]]
    rc, out, err = run_cli(capsys, *argv, "--checkpoint", ckpt, "--device", "cpu")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"minigpt {argv[0]}: error: ") and "Traceback" not in err
    assert message in lines[0]


# ---- tokens of whitespace keep the columns (terminal attention view, sample --show-probs) ------------


def test_visible_token_known_answers():
    assert visible_token(" \n  ") == "\u00b7\u23ce\u00b7\u00b7"
    assert visible_token("\tx\x00\r") == "\u21e5x\\x00\u240d"
    assert visible_token("abcdefgh", 5) == "abcd\u2026" and visible_token("ab", 5) == "ab   "
    assert visible_token("\u65e5\u672c\u8a9e", 5) == "\u65e5\u672c\u2026"  # wide characters count 2 columns
    assert visible_token("\u00a0") == "\\xa0"  # a no-break space is not mistaken for a space


def test_terminal_attention_view_keeps_columns_with_whitespace_tokens():
    tokens = ["ROMEO", ":", "\n    ", " ", "\t", "\n\n", "thou"]
    T = len(tokens)
    w = np.tril(np.ones((T, T), np.float32))
    maps = AttentionMaps(tokens=tokens, ids=list(range(T)), weights=(w / w.sum(-1, keepdims=True))[None, None])
    lines = format_attention(maps, 0, 0).splitlines()
    assert len(lines) == T + 1  # no token broke a line
    strips = {line.index(" |") for line in lines[1:]}
    assert len(strips) == 1, lines  # every shade strip starts in the same column
    assert "\u23ce\u00b7\u00b7\u00b7\u00b7" in lines[3]


def test_show_probs_keeps_columns_with_whitespace_tokens(capsys, tmp_path):
    """A model wired to prefer a token of a newline and spaces: the --show-probs table must
    still be one line per token, with its columns in place."""
    corpus = ["ROMEO:\n    Love night\n    day sweet\n"] * 30
    t = Tokenizer.train(corpus, vocab_size=270)
    ws = [i for i in range(t.vocab_size) if "\n" in t.token_str(i) and " " in t.token_str(i)]
    short = [i for i in range(t.vocab_size) if t.token_str(i) == "a"]
    assert ws and short
    model = GPT(GPTConfig(vocab_size=t.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, tie_weights=False))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.ln_f.bias[0] = 1.0  # the final norm outputs e_0 whatever the input
        model.lm_head.weight[ws[0], 0] = 4.0  # the whitespace token first, 'a' second
        model.lm_head.weight[short[0], 0] = 3.0
    ckpt = save_checkpoint(tmp_path / "ws", model, t)
    rc, out, err = run_cli(
        capsys,
        "sample",
        "--checkpoint",
        str(ckpt),
        "--prompt",
        "R",
        "--max-new-tokens",
        "3",
        "--show-probs",
        "3",
        "--temperature",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    picked = [line for line in out.splitlines() if line.startswith("picked")]
    assert len(picked) == 3 and all("\u23ce" in line for line in picked)
    for mark in ("p=", "|", "*"):
        assert len({line.index(mark) for line in picked}) == 1, picked
    cands = picked[0].split("|", 1)[1]
    assert cands.index("'a'") - cands.index("*") == 1 + 12 + 1 + 5 + 1 + 1  # fixed-width candidate cells
