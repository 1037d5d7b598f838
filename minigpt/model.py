"""The GPT, read from parts to whole:

    positional encodings -> KV cache -> causal self-attention -> MLP -> block -> GPT

A GPT turns token ids into next-token logits:

    ids [B, T] --wte--> x [B, T, C] (+ learned/sinusoidal positions)
      --> n_layer x Block( x + attn(ln_1(x)); x + mlp(ln_2(x)) )     (pre-LayerNorm)
      --> ln_f --> lm_head --> logits [B, T, vocab]

Shapes in comments: B batch, T tokens in this call, L cache length, C = n_embd,
H = n_head, D = C / H (head size), V = vocab size.

Attention has two paths computing the same function: the fast one
(`F.scaled_dot_product_attention`, which picks flash/memory-efficient kernels) used by
default, and an explicit softmax(QK^T / sqrt(D)) that also returns the weights, used
when `return_attention=True`, for dropout on the weights on the CPU, and in a compiled
CPU step over a short context (faster there). The tests hold them equal.

Parameter names follow GPT-2 / nanoGPT (`transformer.h.0.attn.c_attn.weight`, ...), so
importing Hugging Face GPT-2 weights is a rename plus a transpose (see `hf.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .errors import ConfigError
from .kernels import cross_entropy, dropout

__all__ = ["GPTConfig", "GPT", "GPTOutput", "KVCache", "KVPlan", "sinusoidal_table", "apply_rope", "check_token_ids"]


# ---- positional encodings -------------------------------------------------------------


def sinusoidal_table(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The original Transformer's fixed encoding (Vaswani et al. 2017, section 3.5):

        PE[p, 2i]   = sin(p / base^(2i / dim))
        PE[p, 2i+1] = cos(p / base^(2i / dim))

    Returns a float32 tensor [n_positions, dim].
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [dim/2]
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table.float()


def rope_tables(n_positions: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each [n_positions, head_dim / 2]:
    angle[p, i] = p * base^(-2i / head_dim) (Su et al. 2021, RoFormer)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * inv_freq
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[..., i], x[..., i + D/2]) of q or k by its position's angle.

    x: [B, H, T, D]; cos, sin: broadcastable to [B, H, T, D/2]. A rotation keeps |x|, and
    rotating q by angle(m) and k by angle(n) makes q.k depend only on m - n: that is what
    makes RoPE a *relative* position encoding. (The "split halves" pairing of GPT-NeoX
    and Llama in HF; the original interleaves pairs, which is the same up to a fixed
    permutation of the head dimensions.)
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# ---- KV cache ---------------------------------------------------------------------------


class KVPlan(NamedTuple):
    """Where one forward call's T tokens go in a `KVCache`, and what they may attend to."""

    slots: torch.Tensor  # [T] the slots this call writes
    positions: torch.Tensor  # [B, T] each token's position within its own row (rows may be left-padded)
    mask: torch.Tensor  # [B, 1, T, S] bool, True = may attend (S = n_keys)
    n_keys: int  # S: how many slots, from the first, the queries attend over


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding; the one place
    that knows their layout.

    k, v: [n_layer, B, H, L, D]. `pos` (a 0-dim device tensor) is the next slot to write,
    the same for every row; `start[b]` is the first slot of row b that holds a real token
    (rows of a batch are left-padded to end together; padded slots are never attended to).
    A token's position is its slot minus its row's start, so moving a row's slots (`shift`)
    changes no number the model computes.

    A forward call asks `plan(T)`, writes each layer's new keys and values with `update`,
    then `advance(T)`. None of these changes a shape or reads a value back to the host, so
    a decode step over the cache can be compiled and captured in a CUDA graph (`static`).
    The sampler's `Batch` edits a running batch with the row operations: `select` (rows
    leave), `append` (rows join), `make_room` (the cache is full).

    >>> c = KVCache(n_layer=2, batch_size=3, n_head=4, max_len=16, head_dim=8)
    >>> c.k.shape, c.fill
    (torch.Size([2, 3, 4, 16, 8]), 0)
    """

    static = True  # its tensors never move from step to step: a CUDA graph can replay over them

    def __init__(self, n_layer, batch_size, n_head, max_len, head_dim, *, device=None, dtype=torch.float32):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.start = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.slots = torch.arange(max_len, device=device)  # [L], for masks

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def fill(self) -> int:
        """Slots in use (== pos). NOTE: a host read of a device counter, so a sync on CUDA;
        the sampler asks once a step, after reading that step's tokens (the GPU is idle)."""
        return int(self.pos)

    @property
    def full(self) -> bool:
        return self.fill >= self.max_len

    def _like(self, batch_size: int) -> KVCache:
        n_layer, _, n_head, max_len, head_dim = self.k.shape
        return KVCache(n_layer, batch_size, n_head, max_len, head_dim, device=self.k.device, dtype=self.k.dtype)

    def reset(self, start: torch.Tensor | None = None) -> None:
        """Empty the cache (in place). `start`: per-row count of left-padding slots."""
        self.pos.zero_()
        if start is None:
            self.start.zero_()
        else:
            self.start.copy_(start)

    # ---- one forward call -------------------------------------------------------------

    def plan(self, T: int) -> KVPlan:
        """Slots, positions and the attention mask for T new tokens of every row."""
        slots = self.pos + torch.arange(T, device=self.pos.device)  # [T]
        positions = (slots[None, :] - self.start[:, None]).clamp_min(0)  # [B, T]
        # How many slots to attend over. Static shapes want all of them (the mask hides the
        # empty ones), which is what a compiled / CUDA-graph step needs. On the CPU, reading
        # the fill level costs no device sync, and attending over the filled slots only
        # saves most of the attention work early in a long cache.
        n_keys = self.max_len
        if self.k.device.type == "cpu" and not torch.compiler.is_compiling():
            n_keys = int(self.pos) + T
        key = self.slots[None, None, :n_keys]  # [1, 1, S]
        # Query at slot s sees keys at slots start[b]..s. A padding query sees only itself,
        # so its softmax row is never empty (an all -inf row would give NaN).
        mask = (key <= slots[None, :, None]) & ((key >= self.start[:, None, None]) | (key == slots[None, :, None]))
        return KVPlan(slots, positions, mask[:, None], n_keys)  # mask [B, 1, T, S]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, plan: KVPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's keys and values k, v [B, H, T, D] of `layer` at the planned
        slots; return the keys and values to attend over, [B, H, S, D] in k's dtype."""
        k_buf, v_buf = self.k[layer], self.v[layer]  # [B, H, L, D]
        k_buf.index_copy_(2, plan.slots, k.to(k_buf.dtype))
        v_buf.index_copy_(2, plan.slots, v.to(v_buf.dtype))
        return k_buf[:, :, : plan.n_keys].to(k.dtype), v_buf[:, :, : plan.n_keys].to(v.dtype)

    def advance(self, T: int) -> None:
        """The call's T tokens are in: the next call writes after them (on the device)."""
        self.pos.add_(T)

    def rewind(self, n: int) -> None:
        """Take back the last n tokens: the next call writes over their slots. (The sampler
        rewinds the warm-up steps it runs before capturing a CUDA graph.)"""
        self.pos.sub_(n)

    # ---- rows and slots ---------------------------------------------------------------

    def shift(self, d: int) -> None:
        """Move every row's tokens d slots to the right (d < 0: left), in place. Positions
        count from each row's start, which moves along, so no key, value or position
        changes: only free slots move from one end to the other.

        e.g. fill 3, start [1, 0]: row 0 = [pad, a, b], row 1 = [c, d, e]. shift(2) gives
        [_, _, pad, a, b] and [_, _, c, d, e], start [3, 2], fill 5."""
        f = self.fill
        if not -int(self.start.min()) <= d <= self.max_len - f:
            raise ValueError(f"cannot shift by {d}: rows start at {self.start.tolist()}, {f} of {self.max_len} used")
        if d == 0:
            return
        for t in (self.k, self.v):
            if d > 0:
                t[:, :, :, d : d + f] = t[:, :, :, :f].clone()
            else:
                t[:, :, :, : f + d] = t[:, :, :, -d:f].clone()
        self.start.add_(d)
        self.pos.add_(d)

    def make_room(self) -> bool:
        """Free slots at the end by dropping the left padding every row has (in place).
        False if there is none: some row's text fills the cache."""
        m = int(self.start.min())
        if m <= 0:
            return False
        self.shift(-m)
        return True

    def select(self, rows: Sequence[int] | torch.Tensor) -> KVCache:
        """A new cache holding only `rows` (indices into this one), in that order."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        out = self._like(len(idx))
        out.k.copy_(self.k.index_select(1, idx))
        out.v.copy_(self.v.index_select(1, idx))
        out.start.copy_(self.start.index_select(0, idx))
        out.pos.copy_(self.pos)
        return out

    def append(self, other: KVCache) -> KVCache:
        """A new cache with this one's rows, then `other`'s. Each side's tokens move right
        as needed so that every row ends at the same slot (as if all had been left-padded
        to the longest) and the next token of every row goes to the same slot."""
        if not isinstance(other, KVCache):
            raise TypeError(f"append: a KV cache takes another one's rows, not a {type(other).__name__}")
        if other.k.shape[::2] != self.k.shape[::2]:  # n_layer, H, D
            raise ValueError(f"append: caches of different models ({other.k.shape} and {self.k.shape})")
        fa, fb = self.fill, other.fill
        f = max(fa, fb)
        if f > self.max_len:
            raise ValueError(f"append: {fb} tokens do not fit a cache of {self.max_len} slots")
        B = self.batch_size
        out = self._like(B + other.batch_size)
        for dst, a, b in ((out.k, self.k, other.k), (out.v, self.v, other.v)):
            dst[:, :B, :, f - fa : f] = a[:, :, :, :fa]
            dst[:, B:, :, f - fb : f] = b[:, :, :, :fb]
        out.start.copy_(torch.cat([self.start + (f - fa), other.start + (f - fb)]))
        out.pos.fill_(f)
        return out


# ---- normalisation --------------------------------------------------------------------------


def make_norm(cfg: GPTConfig, dim: int | None = None) -> nn.Module:
    """LayerNorm (GPT-2: subtract the mean, divide by the standard deviation, scale, shift)
    or RMSNorm (Llama, Qwen: divide by the root mean square and scale; no mean, no bias:
    cheaper, and as good in practice). `dim`: the width normalised (default n_embd)."""
    dim = dim or cfg.n_embd
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.layer_norm_eps)
    return nn.LayerNorm(dim, eps=cfg.layer_norm_eps, bias=cfg.bias)


# ---- dropout -------------------------------------------------------------------------------


class Dropout(nn.Dropout):
    """nn.Dropout (zero each element with probability p, scale the rest by 1 / (1 - p)),
    with its keep-masks made cheaply on the CPU by `kernels.dropout` (16 random bits an
    element, a 1-byte mask; the same masks compiled or not), kept with probability 1 - p to
    1/65536. `fast` False is F.dropout itself (the benchmarks
    compare them in one process). CUDA keeps F.dropout: there it is already one fused kernel."""

    fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.p > 0 and self.fast and x.device.type == "cpu"):
            return super().forward(x)
        return dropout(x, self.p)


# ---- attention ---------------------------------------------------------------------------

# The longest context whose attention a compiled CPU step writes out in bf16 rather than
# calling the fp32 flash kernel (CausalSelfAttention.forward). The plan's compiled step (5 x
# 192, 2048 tokens; benchmarks/train_step_speed.py, Intel Xeon, 2026-12-07): with the plan's
# 3 heads of 64, written out wins at 128 (flash 0.91x) and at 256 (flash 0.88x); with 6 heads
# of 32 it wins at 64 and 128 (flash 0.94x, 0.97x) and ties at 256 (1.02x). The plan's
# contexts stop at 256; past it the [T, T] scores grow with the square of the context.
COMPILED_EXPLICIT_MAX_T = 256


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q/k/v projection."""

    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.layer = layer  # which of the KV cache's layers is this one's
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        # QK-norm (Qwen3; modded-nanogpt): normalise each head's q and k before the dot
        # product, so attention logits cannot grow without bound as training sharpens them.
        self.q_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        # Dropout on the attention weights (GPT-2, nanoGPT) as well as on the output, unless
        # cfg.attn_dropout is off: then the CPU keeps its flash-attention kernel (which has no
        # dropout). With it, the CPU takes the explicit [B, H, T, T] product and masks the
        # weights with `weight_drop` (see forward); CUDA keeps SDPA's fused dropout.
        self.weight_dropout = cfg.dropout if cfg.attn_dropout else 0.0
        self.weight_drop = Dropout(self.weight_dropout)
        self.resid_dropout = Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, C]
        rope: tuple[torch.Tensor, torch.Tensor] | None,  # cos, sin [B or 1, 1, T, D/2]
        cache: KVCache | None,  # keys and values of the tokens before x; None = causal over x alone
        plan: KVPlan | None,  # with a cache: where x's tokens go, and the mask [B, 1, T, S]
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # [B, T, C] -> [B, H, T, D]
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        qkv_dtype = q.dtype
        cpu_bf16 = q.dtype == torch.bfloat16 and q.device.type == "cpu" and cache is None
        # Compiled, a short context's attention is fastest written out in bf16: two batched
        # products and one fused softmax kernel (the plan's compiled step 1.14x faster, the
        # same loss at 1300 steps: BENCHMARKS.md, ninth pass). The flash kernel's tiling pays
        # only for long sequences, and eager, the written-out product runs as unfused ops.
        compiled_explicit = cpu_bf16 and T <= COMPILED_EXPLICIT_MAX_T and torch.compiler.is_compiling()
        fp32_attention = cpu_bf16 and not compiled_explicit
        if fp32_attention:
            # The CPU's flash-attention kernel is ~3.6x slower in bf16 than in fp32 (its
            # backward above all: 3.3 vs 0.9 ms a layer at nanoGPT's CPU shape, measured),
            # and attention is a small share of the FLOPs: under bf16 autocast on the CPU,
            # everything from here to the output projection runs in fp32 (QK-norm too: fed
            # bf16 with fp32 gains, RMSNorm falls off its fused kernel).
            q, k, v = q.float(), k.float(), v.float()
        if self.q_norm is not None:  # before RoPE, as Qwen3 does
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask = None
        if cache is not None:
            # store this call's keys and values; attend over the cache's (the mask hides
            # empty and padded slots)
            k, v = cache.update(self.layer, k, v, plan)
            mask = plan.mask
        dropout_p = self.weight_dropout if self.training else 0.0
        # On the CPU, SDPA with dropout leaves its flash kernel for a math path that masks the
        # weights with one serial Bernoulli draw each (0.79M a layer at the cpu preset: most of
        # what dropout cost a step, BENCHMARKS.md); the explicit product computes the same
        # function with the model's Dropout, whose masks are cheap (kernels.py).
        explicit = need_weights or compiled_explicit or (dropout_p > 0 and q.device.type == "cpu" and Dropout.fast)
        # (out of autocast, which would cast fp32 attention straight back to bf16)
        with torch.autocast("cpu", enabled=False) if fp32_attention else nullcontext():
            if explicit:
                y, att = explicit_attention(q, k, v, mask, self.weight_drop if dropout_p > 0 else None)
            else:
                att = None
                if mask is None:
                    y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
                else:
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C).to(qkv_dtype)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y)), att


def explicit_attention(q, k, v, mask=None, drop=None):
    """softmax(q k^T / sqrt(D) + causal mask) v, written out, returning the weights too.

    q: [B, H, T, D]; k, v: [B, H, S, D]; mask: [B, 1, T, S] bool or None (None: causal,
    query t sees keys 0..t); drop: the dropout applied to the weights before v (training),
    or None. Returns y [B, H, T, D] and the weights [B, H, T, S] before dropout; each row
    sums to 1 and is 0 wherever the mask forbids attending (above the diagonal).
    """
    T, S = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.shape[-1]))  # [B, H, T, S]
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    # The mask as a bias of 0 or -inf, added in place: on the CPU a masked_fill over
    # [B, H, T, S] (and its backward's) is not vectorised, an addition is (kernels._Dropout).
    scores = scores.add_(torch.zeros(mask.shape, dtype=scores.dtype, device=q.device).masked_fill_(~mask, -math.inf))
    att = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    y = (att if drop is None else drop(att)) @ v
    return y, att


# ---- MLP and block -----------------------------------------------------------------------


class MLP(nn.Module):
    """Position-wise feed-forward, one of three (`cfg.mlp`), H = cfg.hidden_dim:

    gelu        C -> H -> GELU (tanh approximation) -> C   GPT-2 ("gelu_new" in transformers)
    gelu_exact  C -> H -> GELU (exact, with erf) -> C      nanoGPT, BERT ("gelu" in transformers)
    relu2   C -> H -> ReLU(x)^2 -> C                       Primer; modded-nanogpt
    swiglu  C -> (SiLU(x W_gate) * x W_up) -> H -> C       Llama, Qwen (gated: three matrices)
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        H = cfg.hidden_dim
        self.kind = cfg.mlp
        self.c_fc = nn.Linear(cfg.n_embd, H, bias=cfg.bias)
        self.c_gate = nn.Linear(cfg.n_embd, H, bias=cfg.bias) if cfg.mlp == "swiglu" else None
        self.c_proj = nn.Linear(H, cfg.n_embd, bias=cfg.bias)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "gelu":
            # GPT-2 uses the tanh approximation of GELU ("gelu_new" in transformers); exact
            # GELU would differ from imported GPT-2 weights by ~1e-3.
            h = F.gelu(h, approximate="tanh")
        elif self.kind == "gelu_exact":
            # nanoGPT's nn.GELU(). Also ~5x faster than the tanh form on a CPU (torch's
            # vectorised tanh is slow): 0.05 vs 0.3 ms for a [768, 512] activation.
            h = F.gelu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:  # swiglu: c_fc is the "up" projection, c_gate the gate
            h = F.silu(self.c_gate(x)) * h
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, cache, plan, need_weights):
        a, att = self.attn(self.ln_1(x), rope, cache, plan, need_weights)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, att


# ---- the GPT -------------------------------------------------------------------------------


def check_token_ids(idx, targets, vocab_size: int, *, check_values: bool) -> None:
    """The one check of a model's input, shared by every kind (see models.py): idx is a
    non-empty [batch, time] tensor of integer ids, targets (if any) has its shape, and, if
    `check_values`, every id is in [0, vocab_size) — reading the values back costs a
    device sync, so the trainer checks its data once and turns that part off."""
    if not isinstance(idx, torch.Tensor):
        raise ValueError(f"idx must be a torch.Tensor of token ids, got {type(idx).__name__}")
    if idx.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
        raise ValueError(f"idx must hold integer token ids (int64), got dtype {idx.dtype}")
    if idx.dim() != 2:
        raise ValueError(f"idx must have shape [batch, time], got {tuple(idx.shape)}")
    if idx.shape[1] == 0:
        raise ValueError("idx is empty: give at least one token")
    if targets is not None and targets.shape != idx.shape:
        raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
    if check_values:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"token id {lo if lo < 0 else hi} is out of range for vocab_size {vocab_size}")


class GPTOutput(NamedTuple):
    """What `GPT.forward` returns, always (fields are None when not asked for)."""

    logits: torch.Tensor  # [B, T, V]: next-token logits at every input position
    loss: torch.Tensor | None  # mean cross-entropy in nats per token, when targets are given
    attentions: tuple[torch.Tensor, ...] | None  # per layer [B, H, T, T], when return_attention


class GPT(nn.Module):
    model_type = "gpt"  # how checkpoints name this kind of model (see models.py)
    has_attention = True  # `return_attention=True` gives every head's weights
    learns_by = "gradient"
    # The loss by `kernels.cross_entropy` (chunked, fp32 accumulation, the bf16 gradient
    # written once) rather than F.cross_entropy on an fp32 copy of the logits: the same
    # value to rounding. On the CPU in eager mode only (a GPU's kernels, or the compiler's
    # fusion, already do this). False: F.cross_entropy (the benchmarks compare the two).
    fused_loss = True

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                drop=Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer)),
                ln_f=make_norm(cfg),
            )
        )
        if cfg.pos_encoding == "learned":
            self.transformer["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        elif cfg.pos_encoding == "sinusoidal":
            if cfg.n_embd % 2:
                raise ConfigError("n_embd: sinusoidal positions need an even n_embd")
            # Fixed, not learned: a buffer (not saved in checkpoints; recomputed on load).
            self.register_buffer("pos_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        else:  # rope
            cos, sin = rope_tables(cfg.block_size, cfg.head_dim, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            # One matrix both embeds tokens and scores them (Press & Wolf 2017).
            self.lm_head.weight = self.transformer.wte.weight
        # Validating ids costs a device sync; the trainer checks its data once instead and
        # turns this off. Compiled code skips it regardless.
        self.check_inputs = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, and the projections that
        write into the residual stream scaled by 1/sqrt(2 * n_layer), so the stream's
        variance does not grow with depth."""
        for name, p in self.named_parameters():
            if p.dim() >= 2 and name.endswith("c_proj.weight") and self.config.zero_init_proj:
                # Every block starts as the identity: the residual stream carries the
                # embedding through, and each block learns what to add (modded-nanogpt).
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:  # LayerNorm gains
                nn.init.ones_(p)

    # ---- helpers ---------------------------------------------------------------------

    def num_params(self, exclude_positional: bool = False) -> int:
        """Parameters, each counted once (tied weights too). With `exclude_positional`,
        without the learned position table (it does no matrix multiplies)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_positional and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token, as in the PaLM paper (appendix B):
        6 per weight that multiplies (2 forward, 4 backward), plus attention's
        12 * n_layer * n_embd * T for the QK^T and AV products."""
        T = seq_len or self.config.block_size
        c = self.config
        return 6 * self.num_params(exclude_positional=True) + 12 * c.n_layer * c.n_embd * T

    def make_cache(self, batch_size: int, max_len: int | None = None, *, device=None, dtype=None) -> KVCache:
        c = self.config
        w = self.transformer.wte.weight
        return KVCache(
            c.n_layer,
            batch_size,
            c.n_head,
            max_len or c.block_size,
            c.head_dim,
            device=device or w.device,
            dtype=dtype or w.dtype,
        )

    def score_window(self) -> tuple[int, int]:
        """(window, stride) for scoring a text: non-overlapping windows of block_size, so
        each target sees the mix of context lengths it was trained on (see
        `evaluate.window_plan`)."""
        return self.config.block_size, self.config.block_size

    def _validate(self, idx: torch.Tensor, targets, kv_cache) -> None:
        c = self.config
        values = self.check_inputs and not torch.compiler.is_compiling()
        check_token_ids(idx, targets, c.vocab_size, check_values=values)
        T = idx.shape[1]
        if kv_cache is None and T > c.block_size:
            raise ValueError(
                f"sequence of {T} tokens is longer than block_size {c.block_size}; "
                f"crop it to the last {c.block_size} tokens (the sampler does this)"
            )
        if values and kv_cache is not None:
            if kv_cache.batch_size != idx.shape[0]:
                raise ValueError(f"KV cache is for batch {kv_cache.batch_size}, got batch {idx.shape[0]}")
            if kv_cache.fill + T > kv_cache.max_len:
                raise ValueError(f"KV cache holds {kv_cache.max_len} slots; {kv_cache.fill} used + {T} new do not fit")

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        return_attention: bool = False,
    ) -> GPTOutput:
        """Logits for every position of idx [B, T]; loss if targets [B, T] are given
        (targets of -1 are ignored); per-layer attention weights if `return_attention`.

        With `kv_cache`, idx continues the sequence already in the cache: its tokens are
        written at slots cache.pos .. cache.pos + T - 1 and attend to everything before
        them (a prompt prefill, or a one-token decode step). The cache advances by T.
        """
        # Validation reads values back to the host: not while compiling or while a CUDA
        # graph is being captured (the sampler captures its decode step).
        if not torch.compiler.is_compiling() and not (idx.is_cuda and torch.cuda.is_current_stream_capturing()):
            self._validate(idx, targets, kv_cache)
        if kv_cache is not None and return_attention:
            raise ValueError("return_attention is not supported together with kv_cache")
        T = idx.shape[1]
        c = self.config

        if kv_cache is None:
            plan = None  # plain causal attention within idx
            pos = torch.arange(T, device=idx.device)  # [T]
        else:
            plan = kv_cache.plan(T)  # slots after the cached tokens; the mask over them
            pos = plan.positions  # [B, T]: rows may be left-padded

        x = self.transformer.wte(idx)  # [B, T, C]
        rope = None
        if c.pos_encoding == "learned":
            x = x + self.transformer.wpe(pos)
        elif c.pos_encoding == "sinusoidal":
            # Vaswani et al. scale embeddings by sqrt(C) so they are not drowned by the
            # unit-amplitude sines (our embeddings start at std 0.02).
            x = x * math.sqrt(c.n_embd) + self.pos_table[pos]
        else:
            cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # [T, D/2] or [B, T, D/2]
            if cos.dim() == 2:
                rope = (cos[None, None], sin[None, None])
            else:
                rope = (cos[:, None], sin[:, None])
        x = self.transformer.drop(x)

        attentions = []
        for block in self.transformer.h:
            x, att = block(x, rope, kv_cache, plan, return_attention)
            if return_attention:
                attentions.append(att)
        if kv_cache is not None:
            kv_cache.advance(T)

        logits = self.lm_head(self.transformer.ln_f(x))  # [B, T, V]
        if c.logit_softcap > 0:
            # Smoothly bound the logits to (-cap, cap) (Gemma 2; modded-nanogpt): the model
            # cannot become over-confident by inflating a few logits.
            logits = c.logit_softcap * torch.tanh(logits / c.logit_softcap)
        loss = None
        if targets is not None:
            flat, flat_targets = logits.view(-1, logits.size(-1)), targets.reshape(-1).long()
            if self.fused_loss and flat.device.type == "cpu" and not torch.compiler.is_compiling():
                loss = cross_entropy(flat, flat_targets, ignore_index=-1)
            else:
                loss = F.cross_entropy(flat.float(), flat_targets, ignore_index=-1)
        return GPTOutput(logits, loss, tuple(attentions) if return_attention else None)
