"""Typed configuration: the model's shape (`GPTConfig`) and a training run (`TrainConfig`).

No torch here, and no magic: plain dataclasses that round-trip through JSON, the same
snake_case names in the dataclass, the checkpoint and the logs, kebab-case on the command
line (`n_embd` <-> `--n-embd`). A run's settings are resolved in this order, each step
overriding the one before:

    dataclass defaults  <  --preset  <  --config FILE.toml  <  explicit command-line flags

A fine-tune (`--init-from SOURCE`) starts from the `finetune` preset instead of `cpu`
unless a preset is named; its model's shape comes from SOURCE, not from these settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import files
from .errors import ConfigError

POS_ENCODINGS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
MLPS = ("gelu", "gelu_exact", "relu2", "swiglu")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # --dtype of train, sample and serve

# Where a run with no --data / --out reads and writes. `data/shakespeare`, where no such
# directory exists, means the corpus bundled in the package (bundled.py).
DEFAULT_DATA = "data/shakespeare"
DEFAULT_RUN = "out/shakespeare"  # also what sample, eval, attention, heads and serve read by default

# Caps on every size a user can type. They are far beyond what a laptop (or one GPU node)
# trains, and catch typos such as `--n-layer 100000000` before minutes go into building
# a model that can never fit in memory.
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 16  # n_embd
MAX_CONTEXT = 1 << 20  # block_size, in tokens
MAX_VOCAB = 1 << 24
MAX_NGRAM_ORDER = 16
MAX_PARAMS = 20e9  # ~80 GB of fp32 weights before optimizer state
MAX_BATCH = 1 << 16  # batch_size and grad_accum
MAX_STEPS = 10**12
MAX_SEED = 2**63 - 1  # torch and numpy both take seeds in [0, 2^63)


def check_field(cond: bool, name: str, msg: str) -> None:
    """Raise ConfigError("name: msg") unless cond: every config error names its field (in
    the text, and as `.field` for callers)."""
    if not cond:
        raise ConfigError(f"{name}: {msg}", field=name)


def is_real(v: Any, lo: float = -math.inf, hi: float = math.inf) -> bool:
    """A JSON/Python number (not a bool, not a string) that is finite as a float and in
    [lo, hi]: the numeric rule for float settings (a 400-digit integer is not a float)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    return math.isfinite(f) and lo <= f <= hi


_check = check_field


DEFAULT_PRESET = "cpu"  # what `python train.py` with no arguments trains
FINETUNE_PRESET = "finetune"  # what `python train.py --init-from SOURCE` starts from
SHA256_HEX = frozenset("0123456789abcdef")


@dataclass
class GPTConfig:
    """The shape of a GPT. Example: GPT-2 small is
    `GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)`."""

    vocab_size: int
    block_size: int = 256  # longest context the model attends over
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    # dropout on the attention weights too (GPT-2, nanoGPT); off, attention keeps the CPU's
    # flash kernel, which has no dropout (a step with dropout then ~+10%; with the weights'
    # ~+15-19%). The plan turns it off and drops 1.5x as much on the residual branches: at equal
    # wall time that matched or beat 0.1 here as well on three texts (BENCHMARKS.md, fifth pass)
    attn_dropout: bool = True
    bias: bool = True  # biases in Linear layers and LayerNorms (GPT-2: True)
    pos_encoding: str = "learned"  # learned (GPT-2) | sinusoidal (Vaswani et al.) | rope (rotary)
    tie_weights: bool = True  # the output head shares the token-embedding matrix
    rope_base: float = 10000.0
    layer_norm_eps: float = 1e-5
    # The block's parts (GPT-2's are the defaults; see model.py for each alternative):
    norm: str = "layernorm"  # layernorm (GPT-2) | rmsnorm (Llama, Qwen)
    mlp: str = "gelu"  # gelu: C -> 4C -> GELU -> C (GPT-2) | relu2: ReLU(x)^2 | swiglu: gated SiLU (Llama)
    mlp_hidden: int = 0  # hidden width of the MLP; 0: 4C (gelu, relu2) or the 2/3 of it SwiGLU uses (8C/3, to 64)
    qk_norm: bool = False  # normalise q and k per head before attention (Qwen3, modded-nanogpt)
    logit_softcap: float = 0.0  # cap logits smoothly at +-this with tanh (Gemma 2); 0: off
    zero_init_proj: bool = False  # projections into the residual stream start at zero (modded-nanogpt)

    def __post_init__(self) -> None:
        for name, cap in (
            ("vocab_size", MAX_VOCAB),
            ("block_size", MAX_CONTEXT),
            ("n_layer", MAX_LAYERS),
            ("n_head", MAX_WIDTH),
            ("n_embd", MAX_WIDTH),
        ):
            v = getattr(self, name)
            _check(
                isinstance(v, int) and not isinstance(v, bool) and v > 0, name, f"must be a positive integer, got {v!r}"
            )
            _check(v <= cap, name, f"must be at most {cap:,}, got {v:,}")
        _check(
            self.n_embd % self.n_head == 0,
            "n_embd",
            f"must be divisible by n_head ({self.n_embd} is not a multiple of {self.n_head})",
        )
        _check(
            is_real(self.dropout, 0.0) and self.dropout < 1.0,
            "dropout",
            f"must be in [0, 1), got {self.dropout!r}",
        )
        _check(
            self.pos_encoding in POS_ENCODINGS,
            "pos_encoding",
            f"must be one of {', '.join(POS_ENCODINGS)}; got {self.pos_encoding!r}",
        )
        if self.pos_encoding == "rope":
            _check(
                self.head_dim % 2 == 0, "n_embd", f"rope needs an even head size (n_embd / n_head = {self.head_dim})"
            )
        _check(
            is_real(self.rope_base, 1.0, 1e12) and self.rope_base > 1,
            "rope_base",
            f"must be a number > 1 and at most 1e12, got {_short(self.rope_base)}",
        )
        _check(
            is_real(self.layer_norm_eps, 0.0, 1.0) and self.layer_norm_eps > 0,
            "layer_norm_eps",
            f"must be a positive number at most 1, got {_short(self.layer_norm_eps)}",
        )
        for name in ("bias", "tie_weights"):
            _check(isinstance(getattr(self, name), bool), name, f"must be true or false, got {getattr(self, name)!r}")
        _check(isinstance(self.pos_encoding, str), "pos_encoding", f"must be a string, got {self.pos_encoding!r}")
        _check(self.norm in NORMS, "norm", f"must be one of {', '.join(NORMS)}; got {self.norm!r}")
        _check(self.mlp in MLPS, "mlp", f"must be one of {', '.join(MLPS)}; got {self.mlp!r}")
        _check(
            isinstance(self.mlp_hidden, int)
            and not isinstance(self.mlp_hidden, bool)
            and 0 <= self.mlp_hidden <= 8 * MAX_WIDTH,
            "mlp_hidden",
            f"must be 0 (automatic) or a positive width, got {self.mlp_hidden!r}",
        )
        _check(
            is_real(self.logit_softcap, 0.0) and self.logit_softcap < 1e4,
            "logit_softcap",
            f"must be >= 0 (0 = off) and below 10000, got {_short(self.logit_softcap)}",
        )
        for name in ("qk_norm", "zero_init_proj"):
            _check(isinstance(getattr(self, name), bool), name, f"must be true or false, got {getattr(self, name)!r}")
        check_model_size(self.vocab_size, self.n_layer, self.n_embd)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden_dim(self) -> int:
        """The MLP's hidden width: 4C, or for SwiGLU 2/3 of that rounded up to a multiple
        of 64 (three matrices instead of two, so the same parameter count; Llama's rule)."""
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return -(-int(8 * self.n_embd / 3) // 64) * 64
        return 4 * self.n_embd

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        return dataclass_from_dict(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> GPTConfig:
        return cls.from_dict(json.loads(text))


def _short(v: Any) -> str:
    """repr(v) for a message, cut short (a 400-digit integer is not worth 400 characters)."""
    r = repr(v)
    return r if len(r) <= 40 else f"{r[:20]}... ({len(r)} characters)"


def check_model_size(vocab_size: int, n_layer: int, n_embd: int) -> None:
    """Refuse a shape whose weights alone could not fit in any machine minigpt runs on
    (~12 n_layer n_embd^2 in the blocks plus the embedding), before allocating it."""
    approx = 12 * n_layer * n_embd**2 + vocab_size * n_embd
    if approx > MAX_PARAMS:
        raise ConfigError(
            f"n_layer: {n_layer} layers x {n_embd} wide (vocab {vocab_size:,}) is ~{approx / 1e9:,.0f}B parameters, "
            f"more than the {MAX_PARAMS / 1e9:.0f}B minigpt allows; lower --n-layer/--n-embd"
        )


def dataclass_from_dict(cls, d: dict[str, Any]):
    """A config dataclass from a JSON object, naming the first unknown or missing key."""
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: not a {cls.__name__} field (known: {', '.join(sorted(names))})", field=unknown[0]
        )
    missing = [
        f.name
        for f in fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in d
    ]
    if missing:
        raise ConfigError(f"{missing[0]}: missing from the {cls.__name__}", field=missing[0])
    try:
        return cls(**d)
    except TypeError as e:  # a wrongly typed value that __post_init__ compared before checking its type
        raise ConfigError(f"{cls.__name__}: invalid value ({e})") from None


# ---- training configuration -----------------------------------------------------------


def _duration(text: str) -> float:
    """argparse's type for --max-time (named so a bad value reads "invalid duration value")."""
    return parse_duration(text)


_duration.__name__ = "duration"


def _opt(default, help: str, **kw):
    """A dataclass field that carries its command-line help (and optional choices or metavar)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArgs:
    """What to train: the model kind and its shape (vocab_size comes from the data)."""

    model: str = _opt("gpt", "model kind: gpt, or a baseline (lstm, gru, ngram; see models.py)")
    init_from: str | None = _opt(
        None,
        "fine-tune: start from this model's weights instead of random ones. SOURCE is a minigpt run or checkpoint "
        "directory (a run's best, else last), a Hugging Face GPT-2 or Qwen3 directory (config.json + safetensors), "
        "or a model "
        "name found in the local Hugging Face cache (gpt2, distilgpt2, openai-community/gpt2-medium; offline). The "
        "model's kind, shape and tokenizer come from SOURCE, and the defaults become the finetune preset's "
        "(shown as 'with --init-from' below)",
        metavar="SOURCE",
    )
    init_from_sha256: str | None = _opt(
        None,
        "refuse --init-from SOURCE unless its weights have this SHA-256 (every fine-tune records it)",
        metavar="HEX",
    )
    n_layer: int = _opt(4, "number of Transformer blocks (or recurrent layers)")
    n_head: int = _opt(4, "attention heads per block")
    n_embd: int = _opt(128, "width of the residual stream (embedding size)")
    block_size: int = _opt(64, "context length in tokens; an --init-from model's can be cropped, not grown")
    dropout: float = _opt(0.0, "dropout probability (0 disables it; applied to an --init-from model too)")
    attn_dropout: bool = _opt(
        True,
        "apply --dropout to the attention weights too (GPT-2, nanoGPT); without, attention keeps the CPU's "
        "flash kernel (a planned dropout is residual-only unless --dropout is given)",
    )
    bias: bool = _opt(True, "use biases in Linear layers and LayerNorms")
    pos_encoding: str = _opt("learned", "positional encoding", choices=POS_ENCODINGS)
    tie_weights: bool = _opt(True, "share the token-embedding matrix with the output head")
    norm: str = _opt("layernorm", "normalisation: layernorm (GPT-2) or rmsnorm (Llama, Qwen)", choices=NORMS)
    mlp: str = _opt(
        "gelu",
        "MLP: gelu (tanh form, GPT-2), gelu_exact (erf, nanoGPT), relu2 (ReLU squared) or swiglu (gated, Llama)",
        choices=MLPS,
    )
    qk_norm: bool = _opt(False, "normalise queries and keys per head before attention (Qwen3)")
    logit_softcap: float = _opt(0.0, "bound the logits to +-this with tanh (0: off)")
    zero_init_proj: bool = _opt(False, "start the projections into the residual stream at zero")
    ngram_order: int = _opt(3, "n for --model ngram (3 = trigram)")


@dataclass
class DataArgs:
    data: str = _opt(
        DEFAULT_DATA,
        "prepared dataset directory (see `minigpt prepare`), or text to prepare first, as `minigpt prepare` "
        "takes it: a file, a .gz, a directory of text files or a glob (quoted). Text is prepared with "
        "--init-from's tokenizer, else with a new one of --vocab-size tokens. The default, where no such directory "
        "exists, is the corpus bundled with minigpt, prepared once into ~/.cache/minigpt (or $MINIGPT_CACHE)",
    )
    data_out: str | None = _opt(None, "where text given as --data is prepared (default: OUT/data)", metavar="DIR")
    vocab_size: int = _opt(4096, "tokenizer size when text given as --data is prepared without --init-from")


@dataclass
class OptimArgs:
    max_steps: int = _opt(2000, "optimizer steps in total (a resumed run stops here too)")
    batch_size: int = _opt(12, "sequences per micro-batch, per process")
    grad_accum: int = _opt(1, "micro-batches accumulated per optimizer step")
    lr: float = _opt(1e-3, "peak learning rate (after warmup)")
    min_lr: float = _opt(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _opt(100, "steps of linear warmup from 0 to --lr")
    lr_decay_steps: int = _opt(0, "step at which the cosine decay reaches --min-lr (0: --max-steps)")
    weight_decay: float = _opt(0.1, "AdamW weight decay (matrices only, not biases/norms)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.99, "AdamW beta2")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0 disables)")
    freeze_embeddings: bool = _opt(
        False, "with --init-from: keep the token and position embeddings as loaded (a tied output head with them)"
    )
    freeze_layers: int = _opt(0, "with --init-from: keep the first N Transformer blocks as loaded", metavar="N")
    optimizer: str = _opt(
        "adamw",
        "adamw, or muon: Muon for the blocks' matrices, AdamW for embeddings, head and gains",
        choices=OPTIMIZERS,
    )
    muon_lr: float = _opt(0.02, "Muon's learning rate (with --optimizer muon)")
    muon_weight_decay: float = _opt(
        0.0, "Muon's decoupled weight decay on the blocks' matrices: each step p *= 1 - muon_lr x schedule x this"
    )
    schedule: str = _opt(
        "cosine",
        "learning-rate schedule after warmup: cosine decay, or wsd (constant, then a "
        "linear cooldown to --min-lr over the last --cooldown of the steps)",
        choices=SCHEDULES,
    )
    cooldown: float = _opt(0.4, "share of the steps the wsd schedule spends cooling down")


@dataclass
class RunArgs:
    out: str = _opt(DEFAULT_RUN, "run directory: checkpoints, metrics.jsonl, config")
    device: str = _opt("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    dtype: str = _opt(
        "auto",
        "compute dtype: auto (bf16 on CUDA if supported, else fp16; bf16 autocast on a CPU with "
        "native bf16 (AVX512-BF16/AMX); fp32 elsewhere), float32, bfloat16, float16",
        choices=DTYPES,
    )
    compile: bool | None = _opt(None, "torch.compile the model (default: on for CUDA, off on CPU)")
    eval_interval: int = _opt(250, "evaluate (and checkpoint) every this many steps")
    eval_steps: int = _opt(20, "batches per evaluation of train and val loss")
    log_interval: int = _opt(10, "write a training line to metrics.jsonl every this many steps")
    seed: int = _opt(1337, "random seed (model init, data windows, dropout)")
    resume: bool = _opt(False, "continue the run in --out from its last checkpoint")
    tensorboard: bool = _opt(False, "also log to TensorBoard (needs the tensorboard package)")
    sample_tokens: int = _opt(200, "tokens to sample at the end of training (0: none)")
    threads: int = _opt(0, "CPU threads for torch (0: one per physical core)")
    max_time: float = _opt(
        0.0,
        "train for this wall-clock budget (seconds, or with a unit: 175, 3m, 1h): the step "
        "count is fixed from the speed of the first steps, so the schedule ends on time (0: off)",
        parse=_duration,
    )


SECTIONS = {"model": ModelArgs, "data": DataArgs, "optim": OptimArgs, "run": RunArgs}


@dataclass
class TrainConfig:
    preset: str = DEFAULT_PRESET
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    run: RunArgs = field(default_factory=RunArgs)
    # The settings the run plans itself (plan.py: the budget, vocabulary, dropout, ...): the
    # `cpu` default's that the user left unset. Empty: every setting is taken as given (the
    # Python API's default, and what a planned run records once the plan is made).
    planned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        out = cls(preset=d.pop("preset", DEFAULT_PRESET), planned=d.pop("planned", []))
        _check(
            isinstance(out.planned, list) and all(isinstance(x, str) for x in out.planned),
            "planned",
            f"must be a list of setting names, got {out.planned!r}",
        )
        for name, section in SECTIONS.items():
            setattr(out, name, dataclass_from_dict(section, d.pop(name, {})))
        if d:
            raise ConfigError(f"{sorted(d)[0]}: not a section of the training config")
        out.validate()
        return out

    def flat(self) -> dict[str, Any]:
        """All settings as one flat {snake_case_name: value} dict."""
        return {k: v for name in SECTIONS for k, v in dataclasses.asdict(getattr(self, name)).items()}

    def set(self, name: str, value: Any) -> None:
        for section in SECTIONS:
            obj = getattr(self, section)
            if name in {f.name for f in fields(obj)}:
                setattr(obj, name, value)
                return
        raise ConfigError(f"{name}: not a training setting (see `minigpt train --help`)")

    def validate(self) -> None:
        """Types, ranges and caps of every setting; each error names its field. (The model
        kind and its shape rules are checked where the model is built: `models.py`.)"""
        _coerce_types(self)
        m, o, r = self.model, self.optim, self.run
        for name, cap in (
            ("n_layer", MAX_LAYERS),
            ("n_head", MAX_WIDTH),
            ("n_embd", MAX_WIDTH),
            ("block_size", MAX_CONTEXT),
            ("ngram_order", MAX_NGRAM_ORDER),
        ):
            v = getattr(m, name)
            if name == "block_size" and v == 0:
                continue  # 0: the --init-from model's own context length (checked in _validate_finetune)
            _check(0 < v <= cap, name, f"must be between 1 and {cap:,}, got {v:,}")
        check_model_size(0, m.n_layer, m.n_embd)
        _check(m.pos_encoding in POS_ENCODINGS, "pos_encoding", f"must be one of {', '.join(POS_ENCODINGS)}")
        _check(0.0 <= m.dropout < 1.0, "dropout", f"must be in [0, 1), got {m.dropout}")
        for name, cap in (("max_steps", MAX_STEPS), ("batch_size", MAX_BATCH), ("grad_accum", MAX_BATCH)):
            v = getattr(o, name)
            _check(0 < v <= cap, name, f"must be between 1 and {cap:,}, got {v:,}")
        for name in ("lr", "min_lr", "weight_decay", "muon_weight_decay", "beta1", "beta2", "grad_clip", "dropout"):
            v = getattr(o, name, None) if name != "dropout" else m.dropout
            _check(math.isfinite(v), name, f"must be a finite number, got {v}")
        _check(0 < o.lr <= 10, "lr", f"must be in (0, 10], got {o.lr}")
        _check(0 <= o.min_lr <= o.lr, "min_lr", f"must be between 0 and --lr ({o.lr}), got {o.min_lr}")
        _check(
            0 <= o.warmup_steps <= MAX_STEPS,
            "warmup_steps",
            f"must be between 0 and {MAX_STEPS:,}, got {o.warmup_steps}",
        )
        _check(
            0 <= o.lr_decay_steps <= MAX_STEPS,
            "lr_decay_steps",
            f"must be between 0 and {MAX_STEPS:,}, got {o.lr_decay_steps}",
        )
        _check(o.weight_decay >= 0, "weight_decay", f"must be >= 0, got {o.weight_decay}")
        _check(0 <= o.beta1 < 1, "beta1", f"must be in [0, 1), got {o.beta1}")
        _check(0 <= o.beta2 < 1, "beta2", f"must be in [0, 1), got {o.beta2}")
        _check(o.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}; got {o.optimizer!r}")
        _check(o.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}; got {o.schedule!r}")
        _check(math.isfinite(o.muon_lr) and 0 < o.muon_lr <= 10, "muon_lr", f"must be in (0, 10], got {o.muon_lr}")
        _check(
            0 <= o.muon_weight_decay * o.muon_lr < 1,
            "muon_weight_decay",
            f"must be >= 0 and below 1 / --muon-lr ({1 / o.muon_lr:g}), got {o.muon_weight_decay}",
        )
        _check(math.isfinite(o.cooldown) and 0 <= o.cooldown <= 1, "cooldown", f"must be in [0, 1], got {o.cooldown}")
        _check(math.isfinite(r.max_time) and r.max_time >= 0, "max_time", f"must be >= 0 seconds, got {r.max_time}")
        _check(o.grad_clip >= 0, "grad_clip", f"must be >= 0, got {o.grad_clip}")
        for name in ("eval_interval", "eval_steps", "log_interval"):
            v = getattr(r, name)
            _check(0 < v <= MAX_STEPS, name, f"must be between 1 and {MAX_STEPS:,}, got {v:,}")
        _check(
            0 <= r.sample_tokens <= MAX_CONTEXT,
            "sample_tokens",
            f"must be between 0 and {MAX_CONTEXT:,}, got {r.sample_tokens:,}",
        )
        _check(0 <= r.threads <= 4096, "threads", f"must be between 0 and 4096, got {r.threads}")
        _check(0 <= r.seed <= MAX_SEED, "seed", f"must be between 0 and 2^63 - 1, got {r.seed}")
        for name in ("out", "data"):
            v = getattr(r, name) if name == "out" else self.data.data
            _check(v.strip() != "", name, "must not be empty (name a directory)")
        self._validate_finetune()

    def _validate_finetune(self) -> None:
        """The settings of a fine-tune and of text given as --data."""
        m, d, o = self.model, self.data, self.optim
        if m.init_from is not None:
            _check(
                m.init_from.strip() != "",
                "init_from",
                "must not be empty (name a run, a model directory or a model name)",
            )
        if m.init_from_sha256 is not None:
            _check(m.init_from is not None, "init_from_sha256", "only means something with --init-from")
            _check(
                len(m.init_from_sha256) == 64 and set(m.init_from_sha256.lower()) <= SHA256_HEX,
                "init_from_sha256",
                f"must be 64 hexadecimal digits, got {m.init_from_sha256!r}",
            )
        _check(m.block_size != 0 or m.init_from is not None, "block_size", "0 (the source's) needs --init-from")
        if d.data_out is not None:
            _check(d.data_out.strip() != "", "data_out", "must not be empty (name a directory)")
        _check(
            257 <= d.vocab_size <= MAX_VOCAB,
            "vocab_size",
            f"must be between 257 and {MAX_VOCAB:,}, got {d.vocab_size:,}",
        )
        _check(
            0 <= o.freeze_layers <= MAX_LAYERS,
            "freeze_layers",
            f"must be between 0 and {MAX_LAYERS:,}, got {o.freeze_layers:,}",
        )
        for name in ("freeze_embeddings", "freeze_layers"):
            _check(
                not getattr(o, name) or m.init_from is not None,
                name,
                "only with --init-from (freezing randomly initialised weights keeps them random)",
            )


# Named starting points. Each is a set of overrides of the dataclass defaults; flags and
# --config still override them. Sizes are chosen by measurement (see BENCHMARKS.md).
PRESETS: dict[str, dict[str, Any]] = {
    # The zero-argument default: ~4.5 minutes on a 2-core laptop CPU with the bundled corpus
    # (vocab 2048). The shape was chosen by a sweep (BENCHMARKS.md): with minutes to spend,
    # a shallow, wide model wins. The recipe by A/B runs at equal steps (BENCHMARKS.md,
    # "The recipe"): Muon for the block matrices (the largest gain), then rotary positions,
    # RMSNorm + QK-norm + SwiGLU + zero-initialised projections without biases (which is
    # also exactly Qwen3, so it exports), and a warmup-stable-decay schedule. Batch 32 by
    # A/B runs at equal wall time (BENCHMARKS.md): Muon's Newton-Schulz costs the same per
    # step whatever the batch, so larger batches spend more of the time on the model
    # (batch 12 / 16 / 24 / 32 / 48 in ~200-245 s: 2.006 / 1.999 / 1.998 / 1.979 / 1.974).
    # No dropout in the preset: a planned run gets it from plan.REGULARISATION where the
    # model is exposed enough to its text to overfit (passes x weights per training token;
    # the bundled corpus is not: ~3 passes of 1.67M tokens), on the residual branches only.
    "cpu": dict(
        n_layer=3,
        n_head=6,
        n_embd=192,
        block_size=64,
        dropout=0.0,
        pos_encoding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        qk_norm=True,
        bias=False,
        zero_init_proj=True,
        optimizer="muon",
        muon_lr=0.02,
        schedule="wsd",
        cooldown=0.4,
        max_steps=2300,
        batch_size=32,
        lr=4e-3,
        min_lr=2e-4,
        warmup_steps=100,
        beta2=0.99,
        eval_interval=500,
        eval_steps=8,
    ),
    # nanoGPT's CPU recipe shape (its README: 4 layers, 4 heads, 128 wide, block 64, batch 12).
    # Its model too: nanoGPT's train.py defaults to no biases and its MLP uses nn.GELU(),
    # the exact (erf) GELU; both export to GPT-2 (activation_function "gelu").
    "nanogpt-cpu": dict(
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=64,
        dropout=0.0,
        bias=False,
        mlp="gelu_exact",
        max_steps=2000,
        batch_size=12,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=100,
        beta2=0.99,
        eval_interval=250,
        eval_steps=20,
    ),
    # The size of nanoGPT's config/train_shakespeare_char.py (6 x 384, block 256).
    "shakespeare-char": dict(
        n_layer=6,
        n_head=6,
        n_embd=384,
        block_size=256,
        dropout=0.2,
        max_steps=5000,
        batch_size=64,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=100,
        beta2=0.99,
        eval_interval=250,
        eval_steps=200,
    ),
    # What `--init-from SOURCE` starts from: nanoGPT's finetune_shakespeare.py optimisation
    # (a constant 3e-5, no warmup: the weights are already trained, and a large first
    # step would undo some of that), evaluated often enough to see what fine-tuning buys.
    # The shape comes from SOURCE (block_size 0: its own context); batch 4 so that a
    # GPT-2 124M step fits a laptop (crop with --block-size for speed). Dropout stays 0,
    # as in nanoGPT: --dropout turns it on for the loaded model. Runs go beside the default
    # run (out/shakespeare), not into it.
    FINETUNE_PRESET: dict(
        block_size=0,
        dropout=0.0,
        max_steps=200,
        batch_size=4,
        grad_accum=1,
        lr=3e-5,
        min_lr=3e-5,
        warmup_steps=0,
        weight_decay=0.1,
        beta2=0.99,
        eval_interval=50,
        eval_steps=10,
        log_interval=1,
        out="out/finetune",
    ),
    # GPT-2 small (124M): 12 x 768, block 1024; nanoGPT's train_gpt2.py optimisation.
    "gpt2": dict(
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        dropout=0.0,
        max_steps=600000,
        batch_size=12,
        grad_accum=40,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=2000,
        weight_decay=0.1,
        beta2=0.95,
        eval_interval=1000,
        eval_steps=200,
    ),
}


def apply_preset(cfg: TrainConfig, name: str) -> None:
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    cfg.preset = name
    for k, v in PRESETS[name].items():
        cfg.set(k, v)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a --config file: flat `name = value` lines and/or [model]/[data]/[optim]/[run]
    sections, returned as one flat dict of snake_case names."""
    raw = files.load_toml(path, "config")
    flat: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, dict) and k in SECTIONS:
            flat.update(v)
        else:
            flat[k] = v
    return flat


# ---- command line ---------------------------------------------------------------------


def field_types(cls) -> dict[str, tuple[type, bool]]:
    """Each field of a config dataclass: (its type, whether it may be None), read from the
    real annotations (`typing.get_type_hints` evaluates the strings that `from __future__
    import annotations` leaves), never from their text.

    >>> field_types(RunArgs)["compile"], field_types(RunArgs)["seed"]
    ((<class 'bool'>, True), (<class 'int'>, False))
    """
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        parts = typing.get_args(hint)  # `str | None` -> (str, NoneType); a plain type -> ()
        if parts:
            kinds = [t for t in parts if t is not type(None)]
            if len(kinds) != 1:
                raise TypeError(f"{cls.__name__}.{name}: a setting has one type (or None), not {hint}")
            out[name] = (kinds[0], len(kinds) < len(parts))
        else:
            out[name] = (hint, False)
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser, model_kinds: Sequence[str] = ()) -> None:
    """One flag per training setting, generated from the dataclasses. The defaults shown are
    what a run gets with no flags: the dataclass defaults under the default `cpu` preset;
    where a fine-tune (--init-from) starts elsewhere, "(with --init-from: X)" says so.
    `model_kinds` (the registry's names, see models.py) become --model's choices."""
    parser.add_argument(
        "--preset", choices=list(PRESETS), default=None, help=f"named starting point (default: {DEFAULT_PRESET})"
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        default=None,
        help="read settings from a TOML file (flat keys or [model]/[data]/[optim]/[run] tables)",
    )
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        for f in fields(cls):
            kw: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata["help"]}
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            elif f.name == "model" and model_kinds:
                kw["choices"] = list(model_kinds)
            typ, _ = field_types(cls)[f.name]
            if typ is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["type"] = f.metadata.get("parse") or typ
                kw["metavar"] = f.metadata.get("metavar", f.name.upper())
            default = PRESETS[DEFAULT_PRESET].get(f.name, f.default)
            tuned = PRESETS[FINETUNE_PRESET].get(f.name, f.default)
            if f.name in PRESETS[FINETUNE_PRESET] and tuned != default:
                kw["help"] += f" (with --init-from: {_FINETUNE_SHOWN.get(f.name, tuned)})"
            if default is not None and not isinstance(default, bool):
                kw["help"] += f" (default: {default})"
            group.add_argument(_flag(f.name), **kw)


# How --help shows the finetune defaults that are not plain values.
_FINETUNE_SHOWN = {"block_size": "the source's", "min_lr": "--lr, a constant rate"}


def explicit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user actually typed on the command line."""
    names = {f.name for cls in SECTIONS.values() for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def resolve_train_config(args: argparse.Namespace) -> TrainConfig:
    """defaults < preset < --config TOML < flags. With --init-from (a flag or a key of the
    file) and no preset named, the preset is `finetune`."""
    file_values = load_toml(args.config) if getattr(args, "config", None) else {}
    fine_tune = getattr(args, "init_from", None) is not None or file_values.get("init_from") is not None
    preset = args.preset or file_values.pop("preset", None) or (FINETUNE_PRESET if fine_tune else DEFAULT_PRESET)
    file_values.pop("preset", None)
    cfg = TrainConfig()
    apply_preset(cfg, preset)
    for k, v in file_values.items():
        cfg.set(k, v)
    explicit = explicit_overrides(args)
    for k, v in explicit.items():
        cfg.set(k, v)
    if preset == FINETUNE_PRESET and "min_lr" not in file_values and "min_lr" not in explicit:
        cfg.optim.min_lr = cfg.optim.lr  # the fine-tune schedule is constant, at whatever --lr says
    cfg.validate()
    return cfg


def parse_duration(text) -> float:
    """Seconds from "175", "175s", "3m", "1.5h" (or a number). A ConfigError names max_time.

    >>> parse_duration("3m"), parse_duration("175"), parse_duration(90)
    (180.0, 175.0, 90.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    t = str(text).strip().lower()
    scale = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        raise ConfigError(f"max_time: expected seconds or a duration such as 175, 3m or 1h, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"max_time: must be >= 0 seconds, got {text!r}")
    return value


def _coerce_types(cfg: TrainConfig) -> None:
    """TOML gives 1 where a float is meant, or "3" by mistake: check every value's type."""
    if isinstance(cfg.run.max_time, str):  # a duration such as "3m" (TOML or run.json)
        cfg.run.max_time = parse_duration(cfg.run.max_time)
    for section, cls in SECTIONS.items():
        obj = getattr(cfg, section)
        for name, (want, optional) in field_types(cls).items():
            v = getattr(obj, name)
            if v is None and optional:
                continue
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                setattr(obj, name, float(v))
            elif want is int and not (isinstance(v, int) and not isinstance(v, bool)):
                raise ConfigError(f"{name}: must be an integer, got {v!r}")
            elif want is float and not isinstance(v, (int, float)):
                raise ConfigError(f"{name}: must be a number, got {v!r}")
            elif want is str and not isinstance(v, str):
                raise ConfigError(f"{name}: must be a string, got {v!r}")
            elif want is bool and not isinstance(v, bool):
                raise ConfigError(f"{name}: must be true or false, got {v!r}")
