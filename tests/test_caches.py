"""The decode caches' row operations (`models.DecodeCache`) against recomputation.

Every cache kind — the GPT's KV cache (GPT-2's block and the modern rotary one) and the
RNNs' recurrent state — is prefilled with left-padded texts, edited (`select`, `append`,
`make_room`, `shift`) and decoded on; the oracle is the model run afresh, without a
cache, on each row's whole text."""

import pytest
import torch

from minigpt.baselines import RNNLM, RecurrentState, RNNConfig
from minigpt.model import KVCache
from minigpt.models import DecodeCache

from .conftest import tiny_gpt

BLOCK = 32
KINDS = ["gpt2", "modern", "lstm", "gru"]


def make(kind: str):
    if kind == "gpt2":  # learned positions, LayerNorm, GELU
        return tiny_gpt(pos_encoding="learned", block_size=BLOCK)
    if kind == "modern":  # rotary positions, RMSNorm, SwiGLU, QK-norm (Llama / Qwen3)
        return tiny_gpt(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False, block_size=BLOCK)
    torch.manual_seed(0)
    return RNNLM(RNNConfig(vocab_size=300, block_size=BLOCK, n_layer=2, n_embd=32, cell=kind)).eval()


def texts(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 300, (n,), generator=g).tolist() for n in lengths]


def prefilled(m, rows, max_len=BLOCK):
    """A cache holding `rows` (left-padded to one length) and their next-token logits [B, V]."""
    P = max(len(r) for r in rows)
    idx = torch.tensor([[0] * (P - len(r)) + r for r in rows])
    cache = m.make_cache(len(rows), max_len)
    cache.reset(torch.tensor([P - len(r) for r in rows]))
    return cache, m(idx, kv_cache=cache).logits[:, -1]


def oracle(m, rows):
    """Next-token logits of each row's whole text, each row alone, no cache: [B, V]."""
    return torch.stack([m(torch.tensor([r])).logits[0, -1] for r in rows])


def decode(m, cache, rows, n=3, seed=1):
    """n one-token steps over the cache; each step checked against the oracle."""
    g = torch.Generator().manual_seed(seed)
    rows = [list(r) for r in rows]
    for _ in range(n):
        tok = torch.randint(0, 300, (len(rows), 1), generator=g)
        got = m(tok, kv_cache=cache).logits[:, -1]
        for r, t in zip(rows, tok[:, 0].tolist()):
            r.append(t)
        torch.testing.assert_close(got, oracle(m, rows), atol=2e-5, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
def test_every_cache_speaks_the_protocol_and_prefills_like_recomputing(kind):
    m = make(kind)
    rows = texts(5, 12, 1)
    cache, logits = prefilled(m, rows)
    assert isinstance(cache, DecodeCache) and cache.batch_size == 3
    torch.testing.assert_close(logits, oracle(m, rows), atol=2e-5, rtol=1e-4)
    decode(m, cache, rows)


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
def test_select_keeps_the_chosen_rows_in_their_new_order(kind):
    m = make(kind)
    rows = texts(7, 3, 10, 5)
    cache, _ = prefilled(m, rows)
    kept = cache.select([3, 0])
    assert kept.batch_size == 2 and cache.batch_size == 4  # a new cache; the old one is untouched
    decode(m, kept, [rows[3], rows[0]])
    decode(m, cache, rows)


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("theirs", [(2, 6), (15, 20)], ids=["shorter-joiners", "longer-joiners"])
def test_append_lines_up_rows_prefilled_apart(kind, theirs):
    """Rows prefilled on their own join a running cache: shorter ones end where the
    running rows end, longer ones push the running rows right. Decoding on equals
    recomputing every row's text."""
    m = make(kind)
    ours, new = texts(9, 4, seed=2), texts(*theirs, seed=3)
    a, _ = prefilled(m, ours)
    decode_rows = [list(r) for r in ours]
    # the running rows have decoded a few tokens already
    g = torch.Generator().manual_seed(4)
    for _ in range(2):
        tok = torch.randint(0, 300, (2, 1), generator=g)
        m(tok, kv_cache=a)
        for r, t in zip(decode_rows, tok[:, 0].tolist()):
            r.append(t)
    b, their_logits = prefilled(m, new)
    torch.testing.assert_close(their_logits, oracle(m, new), atol=2e-5, rtol=1e-4)
    both = a.append(b)
    assert both.batch_size == 4
    decode(m, both, decode_rows + new)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["gpt2", "modern"])
def test_kv_cache_shift_moves_slots_and_changes_no_number(kind):
    m = make(kind)
    rows = texts(6, 2, seed=5)
    cache, _ = prefilled(m, rows)
    k_before = cache.k[:, :, :, :6].clone()
    cache.shift(3)
    assert cache.fill == 9 and cache.start.tolist() == [3, 7]
    assert torch.equal(cache.k[:, :, :, 3:9], k_before)
    cache.shift(-2)
    assert cache.fill == 7 and cache.start.tolist() == [1, 5]
    decode(m, cache, rows)
    with pytest.raises(ValueError, match="cannot shift"):
        cache.shift(-2)  # row 0 starts at slot 1: moving it 2 left would lose a token
    with pytest.raises(ValueError, match="cannot shift"):
        cache.shift(BLOCK)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["gpt2", "modern"])
def test_kv_cache_make_room_drops_the_padding_every_row_has(kind):
    """At the context limit: a full cache frees the left padding all rows share, and says
    False when some row's text fills every slot (the sampler then slides its window)."""
    m = make(kind)
    rows = texts(5, 12, seed=6)
    cache, _ = prefilled(m, rows, max_len=12)
    assert cache.full and not cache.make_room()  # row 1 fills all 12 slots
    alone = cache.select([0])  # row 0: 7 slots of padding
    assert alone.full and alone.make_room()
    assert not alone.full and alone.fill == 5 and alone.start.tolist() == [0]
    decode(m, alone, [rows[0]], n=7)
    assert alone.full


@torch.no_grad()
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_recurrent_state_is_never_full(kind):
    m = make(kind)
    cache, _ = prefilled(m, texts(3, 40))  # longer than block_size: a state has no window
    assert not cache.full and cache.make_room()
    with pytest.raises(ValueError, match="prefill it first"):
        m.make_cache(2).select([0])


@torch.no_grad()
def test_caches_of_different_kinds_or_shapes_do_not_mix():
    gpt, rnn = make("gpt2"), make("lstm")
    kv, _ = prefilled(gpt, texts(3))
    state, _ = prefilled(rnn, texts(3))
    with pytest.raises(TypeError):
        kv.append(state)
    with pytest.raises(TypeError):
        state.append(kv)
    other, _ = prefilled(tiny_gpt(n_head=4), texts(3))
    with pytest.raises(ValueError, match="different models"):
        kv.append(other)
    assert isinstance(kv, KVCache) and isinstance(state, RecurrentState)
