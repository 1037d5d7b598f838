"""The model kinds minigpt trains, saves, samples and evaluates: one registry, one interface.

Every kind is one class that speaks `LanguageModel` (below) plus one `Kind` line in
`KINDS`. Everything else asks this module — the trainer builds from `from_args`, the
checkpoint loader from `build`, and the sampler, the evaluator and the inspector read the
interface (`has_attention`, `learns_by`, `make_cache`, `score_window`) instead of
comparing kind names. Adding a kind:

    class MyLM(nn.Module): ...                      # speaks LanguageModel
    Kind("mine", MyLM, MyConfig, lambda a, V: MyConfig(vocab_size=V, ...), "my model"),

and `python train.py --model mine`, checkpoints, `sample`, `eval` and `compare` work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
import torch.nn as nn

from .baselines import RNNLM, NGramConfig, NGramLM, RNNConfig
from .config import GPTConfig, ModelArgs, dataclass_from_dict
from .errors import ConfigError
from .model import GPT, GPTOutput


class ModelConfig(Protocol):
    """What every kind's config offers: the shape as JSON, and the two sizes the trainer
    and the sampler read (`block_size`: the longest context one forward pass sees)."""

    vocab_size: int

    @property
    def block_size(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class DecodeCache(Protocol):
    """What `make_cache` returns: what a model remembers of each row's text between calls,
    so the next token costs one step instead of a pass over the whole window. The GPT's
    `model.KVCache` (keys and values, a slot per token) and the RNNs'
    `baselines.RecurrentState` (one column of hidden state per row) both speak it, and the
    sampler's `Batch` edits a running batch through it alone, never through a tensor:

        cache = model.make_cache(B, block_size)
        cache.reset(pads)                    # rows left-padded by pads[b] tokens
        model(idx [B, P], kv_cache=cache)    # prefill; then model(tok [B, 1], kv_cache=cache) ...
        cache = cache.select([0, 2])         # rows 1 and 3 left
        cache = cache.append(joiners)        # a cache of other rows, prefilled on its own, joins
        if cache.full and not cache.make_room(): ...   # out of slots: re-prefill the windows
    """

    static: ClassVar[bool]  # tensors that never move (KVCache, with rewind(n)): a CUDA graph can replay
    batch_size: int

    @property
    def full(self) -> bool:
        """No room for another token (never, for a recurrent state)."""

    def reset(self, start: torch.Tensor | None = None) -> None:
        """Empty it; `start[b]`: the left-padding tokens of row b, which are never read."""

    def select(self, rows: Sequence[int]) -> DecodeCache:
        """A new cache of `rows` (indices into this one), in that order."""

    def append(self, other: DecodeCache) -> DecodeCache:
        """A new cache of this one's rows, then `other`'s; the next token of every row goes
        to the same place (a KV cache shifts one side to line them up)."""

    def make_room(self) -> bool:
        """Free room for more tokens without changing any row's text (a KV cache drops the
        left padding all rows share); False where it cannot."""


@runtime_checkable
class LanguageModel(Protocol):
    """What every model kind offers (GPT, the RNNs, the n-gram).

    model(idx [B, T], targets=None, *, kv_cache=None, return_attention=False) -> GPTOutput
        logits [B, T, V] for the token after every position; the mean cross-entropy when
        targets are given (-1 = ignored); per-layer attention weights when asked (only
        where `has_attention`; the others raise `errors.NoAttention`).
    """

    model_type: str  # the registry name, written into config.json
    config: ModelConfig
    has_attention: ClassVar[bool]  # `return_attention=True` works (attention, heads)
    learns_by: ClassVar[Literal["gradient", "counting"]]  # AdamW steps, or one `fit(tokens)` pass
    check_inputs: bool  # validate token ids each call (a host sync; the trainer checks once instead)

    def __call__(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: Any = None,
        return_attention: bool = False,
    ) -> GPTOutput: ...

    def num_params(self) -> int: ...

    def flops_per_token(self, seq_len: int | None = None) -> float | None:
        """Training FLOPs per token (for MFU), or None where that means nothing."""

    def make_cache(self, batch_size: int, max_len: int | None = None, *, device=None, dtype=None) -> DecodeCache | None:
        """The decoding state for `batch_size` rows (`max_len` tokens each, where that
        means something), or None: the sampler then re-reads the last block_size tokens
        every step (the n-gram)."""

    def score_window(self) -> tuple[int, int]:
        """(window, stride) with which `evaluate.evaluate_tokens` scores a whole text."""


@dataclass(frozen=True)
class Kind:
    """One registered kind: its name (as in `--model` and config.json), its class and
    config class, how `train` flags become a config, and a phrase for messages."""

    name: str
    cls: type[nn.Module]
    config_cls: type
    from_args: Callable[[ModelArgs, int], Any]  # (model flags, vocab_size) -> config
    describe: str


def _gpt_config(a: ModelArgs, vocab_size: int) -> GPTConfig:
    return GPTConfig(
        vocab_size=vocab_size,
        block_size=a.block_size,
        n_layer=a.n_layer,
        n_head=a.n_head,
        n_embd=a.n_embd,
        dropout=a.dropout,
        attn_dropout=a.attn_dropout,
        bias=a.bias,
        pos_encoding=a.pos_encoding,
        tie_weights=a.tie_weights,
        norm=a.norm,
        mlp=a.mlp,
        qk_norm=a.qk_norm,
        logit_softcap=a.logit_softcap,
        zero_init_proj=a.zero_init_proj,
    )


def _rnn_config(cell: str) -> Callable[[ModelArgs, int], RNNConfig]:
    def make(a: ModelArgs, vocab_size: int) -> RNNConfig:
        return RNNConfig(
            vocab_size=vocab_size,
            block_size=a.block_size,
            n_layer=a.n_layer,
            n_embd=a.n_embd,
            dropout=a.dropout,
            cell=cell,
            tie_weights=a.tie_weights,
        )

    return make


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("gpt", GPT, GPTConfig, _gpt_config, "a GPT (causal self-attention Transformer)"),
        Kind("lstm", RNNLM, RNNConfig, _rnn_config("lstm"), "an LSTM language model"),
        Kind("gru", RNNLM, RNNConfig, _rnn_config("gru"), "a GRU language model"),
        Kind(
            "ngram",
            NGramLM,
            NGramConfig,
            lambda a, V: NGramConfig(vocab_size=V, order=a.ngram_order),
            "an interpolated Kneser-Ney n-gram model",
        ),
    )
}


def names() -> list[str]:
    return list(KINDS)


def kind(name: str, field: str = "model") -> Kind:
    """The registered kind called `name`, or a ConfigError naming `field` and the choices."""
    if name not in KINDS:
        raise ConfigError(f"{field}: unknown model kind {name!r} (known: {', '.join(KINDS)})")
    return KINDS[name]


def from_args(args: ModelArgs, vocab_size: int) -> nn.Module:
    """The untrained model `python train.py --model KIND ...` asks for."""
    k = kind(args.model)
    return k.cls(k.from_args(args, vocab_size))


def build(name: str, config: dict[str, Any]) -> nn.Module:
    """An untrained model of the kind and shape a checkpoint's config.json describes
    (a ConfigError names the bad field)."""
    k = kind(name, "model_type")
    model = k.cls(dataclass_from_dict(k.config_cls, config))
    if model.model_type != name:  # e.g. an RNN config whose cell disagrees with its kind
        raise ConfigError(f"model_type: config.json says {name!r} but its settings describe {model.model_type!r}")
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = dict(model.named_children()).get("_orig_mod")  # torch.compile's OptimizedModule
        if inner is not None:
            model = inner
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
