"""The `minigpt` command line: argparse subcommands and exit codes.

Every command's handler lives here (`_run_NAME`); the modules it calls compute and render.
Exit codes: 0 success; 2 bad input (one line on stderr, never a traceback); 1 the
environment failed (a full disk: still one line); 130/143 a run stopped by SIGINT/SIGTERM
after saving its checkpoint. Anything else that escapes is a bug and keeps its traceback.

Each command's parser is built only when that command runs, and the modules a handler
needs are imported inside it, so `minigpt --help` and `minigpt prepare ...` do not pay
for importing torch and everything else.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence

from . import DIST_NAME as DIST  # what pip installs: pip install minigpt-toolkit
from .config import DEFAULT_RUN, DTYPES, MAX_SEED
from .errors import MiniGPTError
from .files import FileError, os_error

PROG = "minigpt"

# Caps on the sizes a sampling command takes (the server has its own, smaller, flags).
# Generation streams, so these bound run time and the per-row buffers, not a preallocation.
MAX_NEW_TOKENS = 1_000_000
MAX_SAMPLES = 1024  # rows decoded in one batch, each with its own KV cache


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage block is one --help away)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help whose defaults are read from the parser itself, at --help time.

    A flag's help ends with "(default: %(default)s)", which argparse fills from the action's
    default: the value the parser really uses, so the text cannot drift from the code (eval's
    `set_defaults(max_new_tokens=200, seed=0)` shows 200 and 0; sample shows its own).
    A default of None (or "") means "not given": its help shows the words `_unset` attached
    ("random"), or nothing. Help that states its default itself is left alone: the train
    flags, whose parser default is None so that typed flags can be told apart, show what a
    bare run gets (config.add_train_arguments). tests/test_cli.py checks every shown
    default of every command against what the parser (or the resolved config) gives."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if "%(default)" in text or "(default:" in text:  # stated by the caller (train's flags)
            return text
        if action.default is None or action.default == "":
            words = getattr(action, "unset", None)
            return f"{text} (default: {words})" if words else text
        if action.nargs == 0 or action.default == []:  # store_true / append: nothing worth showing
            return text
        return text + " (default: %(default)s)"


def _unset(action: argparse.Action, words: str) -> argparse.Action:
    """Say in --help what a flag that defaults to None does when not given ("random")."""
    action.unset = words  # read by _HelpFormatter
    return action


def _formatter(prog):
    return _HelpFormatter(prog, max_help_position=34, width=100)


def _int_in(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi], else a one-line usage error naming the range."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {s!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo:,} and {hi:,}, got {v:,}")
        return v

    parse.__name__ = "integer"  # what argparse names in "invalid integer value"
    return parse


def _finite_float(s: str) -> float:
    import math

    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


_non_negative_int = _int_in(0, 2**31 - 1)
_seed = _int_in(0, MAX_SEED)


# ---- the commands: (summary, parser builder, runner) ----------------------------------------


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")


def _add_sampling(p: argparse.ArgumentParser, min_new_tokens: int = 0) -> None:
    """The die's flags, shared by sample and eval (eval needs at least one new token). The
    settings' flags come from `SamplingParams`' fields (type, default, help): one declaration
    for the flags, the library and the API. Their bounds are checked by `_sampling_params`."""
    from .sampling import settings  # imports torch: only when sample's or eval's parser is built

    g = p.add_argument_group("sampling (the die)")
    g.add_argument(
        "--max-new-tokens",
        type=_int_in(min_new_tokens, MAX_NEW_TOKENS),
        default=500,
        metavar="N",
        help=f"tokens to generate per sample, at most {MAX_NEW_TOKENS:,}",
    )
    for s in settings():
        g.add_argument(
            s.flag,
            dest=s.name,
            type=_int_in(int(s.lo), int(s.hi)) if s.type is int else _finite_float,
            default=s.suggested,
            metavar=s.metavar,
            help=s.help,
        )
    _unset(
        g.add_argument(
            "--seed", type=_seed, default=None, help="random seed in [0, 2^63): the same seed gives the same text"
        ),
        "random",
    )


def _add_quantize(p: argparse.ArgumentParser) -> None:
    from .quantize import METHODS  # the one list of methods (imports torch, as the sampling flags do)

    _unset(
        p.add_argument(
            "--quantize",
            choices=METHODS,
            default=None,
            help="int8: weight-only int8 Linear layers, per output channel (faster CPU decoding); int8-dynamic: "
            "activations quantized per row on the fly too (faster still). A checkpoint saved by "
            "`minigpt quantize` loads quantized without it",
        ),
        "off",
    )


def _sampling_params(args):
    """SamplingParams from the flags; its errors name the flag ("--top-p must be in (0, 1]")
    and carry the field (`ConfigError.field`)."""
    from .sampling import SamplingParams

    return SamplingParams.from_flags(args)


def _note(command: str, msg: str) -> None:
    print(f"{PROG} {command}: note: {msg}", file=sys.stderr)


def _build_prepare(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Turn text into a prepared dataset: a byte-level BPE tokenizer trained on the training split, and the\n"
        "token ids of both splits. Writes DIR/train.bin, DIR/val.bin, DIR/tokenizer.json and DIR/meta.json.\n"
        "Each input file is one document; documents are separated by <|endoftext|>. The validation split is the\n"
        "last --val-fraction of the text (nanoGPT's split)."
    )
    p.epilog = "example:\n  minigpt prepare ../shared/data/tinyshakespeare.txt --out build/ts --vocab-size 1024"
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a text file, a .gz text file, a directory (all text files under it, sorted) or a glob",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if needed)")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        metavar="N",
        help="tokenizer vocabulary: 256 bytes + <|endoftext|> + merges; 257 = plain bytes",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of the text (at its end) held out for validation",
    )
    p.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="reuse this tokenizer instead of training one: a tokenizer.json (e.g. GPT-2's), "
        "GPT-2's vocab.json (with merges.txt beside it), or a directory holding either",
    )
    p.add_argument(
        "--sample",
        metavar="SIZE",
        help="prepare about SIZE bytes of a larger text (e.g. 64M, 1G): spans spread evenly over each split, "
        "the tokenizer trained on the sample's training part (what `train --data` does with a text larger than "
        "its budget can read)",
    )
    p.add_argument("--force", action="store_true", help="replace a different dataset already in DIR")
    p.add_argument(
        "--replace-invalid",
        action="store_true",
        help="replace bytes that are not UTF-8 with U+FFFD (with a warning) instead of stopping",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_prepare(args) -> int:
    from .data import parse_size, prepare

    meta = prepare(
        args.inputs,
        args.out,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        tokenizer=args.tokenizer,
        force=args.force,
        replace_invalid=args.replace_invalid,
        progress=not args.quiet,
        sample_bytes=None if args.sample is None else parse_size(args.sample),
    )
    s = meta["splits"]
    sample = meta.get("sample")
    print(
        f"{args.out}: vocab {meta['vocab_size']} ({meta['dtype']}), train {s['train']['tokens']:,} tokens "
        f"({s['train']['bytes']:,} bytes), val {s['val']['tokens']:,} tokens ({s['val']['bytes']:,} bytes), "
        f"{len(meta['sources'])} source file(s)"
        + (f"; a sample of {sample['of_bytes']:,} bytes of text" if sample else "")
    )
    return 0


def _build_train(p: argparse.ArgumentParser) -> None:
    from .config import PRESETS, add_train_arguments

    p.description = (
        "Train a model on a prepared dataset. With no arguments: prepare the bundled Shakespeare corpus if\n"
        "needed, train the CPU-sized default, evaluate, checkpoint to out/shakespeare and print a sample.\n"
        "Settings: dataclass defaults < --preset < --config FILE.toml < flags. Presets: " + ", ".join(PRESETS) + "."
    )
    p.epilog = (
        "examples:\n"
        "  python train.py                                   # the default CPU run\n"
        "  python train.py --preset shakespeare-char --out out/big\n"
        "  python train.py --resume --max-steps 4000          # continue out/shakespeare\n"
        "  python train.py --model lstm --out out/lstm        # a baseline on the same data\n"
        "  python train.py --init-from gpt2 --data my_texts/ --block-size 256   # fine-tune GPT-2 on a folder of text\n"
        "  python train.py --data my_texts/ --max-time 3m     # train from scratch on text, for three minutes\n"
        "  torchrun --nproc_per_node=4 train.py --preset gpt2 --data data/owt --out out/gpt2\n"
        "\n"
        "Ctrl-C or SIGTERM saves a checkpoint and exits (130/143); --resume continues."
    )
    from .models import names

    add_train_arguments(p, names())
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_train(args) -> int:
    from .config import explicit_overrides, load_toml, resolve_train_config
    from .plan import free_settings
    from .trainer import train

    cfg = resolve_train_config(args)
    explicit = explicit_overrides(args)
    # What the user gave (flags, or keys of --config): the rest of the cpu default's plannable
    # settings the run chooses for itself (plan.py), and says so before training.
    given = set(explicit) | set(load_toml(args.config) if args.config else {})
    cfg.planned = free_settings(cfg.preset, given, fine_tune=cfg.model.init_from is not None, resume=cfg.run.resume)
    summary = train(cfg, explicit=explicit, progress=not args.quiet)
    if summary.get("interrupted"):
        return 128 + int(summary["interrupted"])
    return 0


def _build_sample(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Sample text from a trained model. Each new token is a roll of a weighted die: the model's probabilities,\n"
        "reshaped by --temperature and cut by --top-k/--top-p/--min-p. The prompt comes from --prompt, --prompt-file\n"
        "or standard input; an empty prompt starts a fresh document (<|endoftext|>)."
    )
    p.epilog = (
        "examples:\n"
        "  python sample.py --prompt 'ROMEO:' --max-new-tokens 200\n"
        "  python sample.py --prompt 'To be' --show-probs 5 --max-new-tokens 20\n"
        "  echo 'KING:' | minigpt sample --num-samples 3 --json --seed 1\n"
        "\n"
        "Stop strings: the text ends just before the first --stop string (which is not included); the JSON 'ids'\n"
        "still hold every generated token. Past --block-size tokens of context, the model sees the last\n"
        "block_size tokens."
    )
    p.add_argument(
        "--checkpoint",
        default=DEFAULT_RUN,
        metavar="DIR",
        help="a run directory (its best checkpoint, else its last) or a checkpoint directory",
    )
    src = p.add_mutually_exclusive_group()
    _unset(
        src.add_argument("--prompt", metavar="TEXT", help="text to continue"),
        "standard input if it is not a terminal, else empty",
    )
    src.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 file")
    p.add_argument(
        "--num-samples",
        type=_int_in(1, MAX_SAMPLES),
        default=1,
        metavar="N",
        help=f"samples to draw (in one batch), at most {MAX_SAMPLES}",
    )
    _add_sampling(p)
    p.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="end a sample just before this text (repeatable)"
    )
    _add_device(p)
    p.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="weights' dtype: auto = bf16 on CUDA, fp32 elsewhere"
    )
    _unset(
        p.add_argument(
            "--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the decode step"
        ),
        "on for CUDA",
    )
    _add_quantize(p)
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object per sample: {"prompt", "text", "ids", "logprobs", "finish_reason"}',
    )
    p.add_argument(
        "--show-probs",
        type=_non_negative_int,
        default=0,
        metavar="K",
        help="for every generated token, print the K most likely candidates after temperature/top-k/top-p "
        "and the one the die picked; 0 = off",
    )


def _read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file is not None:
        from .files import read_bytes

        try:
            data = read_bytes(args.prompt_file, limit=64 << 20, what="prompt file")
        except FileError as e:
            raise MiniGPTError(f"--prompt-file {e}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MiniGPTError(
                f"--prompt-file {args.prompt_file}: not UTF-8 text (invalid byte at offset {e.start})"
            ) from None
    if sys.stdin is not None and not sys.stdin.isatty():  # None: standard input was closed (`<&-`)
        try:
            data = sys.stdin.buffer.read()
        except OSError as e:
            raise os_error(e, "standard input", "cannot read") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MiniGPTError(f"standard input is not UTF-8 text (invalid byte at offset {e.start})") from None
    return ""


def _run_sample(args) -> int:
    import torch

    from .completion import complete
    from .viewer import visible_token

    params = _sampling_params(args)
    if args.num_samples < 1:
        raise MiniGPTError(f"--num-samples must be >= 1, got {args.num_samples}")
    prompt = _read_prompt(args)
    from .inference import load_for_inference

    ckpt, device = load_for_inference(args.checkpoint, args.device, args.dtype, quantize=args.quantize)
    tok = ckpt.tokenizer
    if args.compile and device.type != "cuda":
        raise MiniGPTError(
            "--compile: compiling the decode step is for CUDA (on the CPU, decoding is already prepacked for oneDNN)"
        )
    compile_ = args.compile if args.compile is not None else device.type == "cuda"
    out = sys.stdout
    stream = not args.json and not args.show_probs
    n = args.num_samples

    def on_text(row: int, text: str) -> None:
        if row == 0 and stream:
            out.write(text)
            out.flush()

    def repr_token(i: int) -> str:
        return f"'{tok.token_str(i)}'"

    def on_step(step) -> None:
        for b in range(n):
            if not step.new[b]:
                continue
            tag = f"[{b + 1}] " if n > 1 else ""
            picked = step.tokens[b]
            # Tokens shown visibly in fixed-width columns (a space '·', a newline '⏎'), so a
            # token of whitespace neither breaks the line nor shifts the columns.
            cands = " ".join(  # candidates cut by top-k/top-p/min-p (probability 0) are left out
                f"{'*' if i == picked else ' '}{visible_token(repr_token(i), 12)} {p:.3f}"
                for i, p in zip(step.top_ids[b], step.top_probs[b])
                if p > 0 or i == picked
            )
            p_picked = torch.tensor(step.logprobs[b]).exp().item()
            out.write(f"{tag}picked {visible_token(repr_token(picked), 14)} p={p_picked:.3f} | {cands}\n")

    if stream:
        if n > 1:
            out.write("--- sample 1 ---\n")
        out.write(prompt)
        out.flush()
    samples = complete(
        ckpt.model,
        tok,
        prompt,
        num_samples=n,
        max_new_tokens=args.max_new_tokens,
        params=params,
        seed=args.seed,
        stop=args.stop,
        on_text=on_text if stream else None,
        on_step=on_step if args.show_probs else None,
        top=args.show_probs,
        compile=compile_,
    )
    if args.json:
        for s in samples:
            # allow_nan=False: every logprob is finite (the sampler guarantees it); a NaN
            # would make the line invalid JSON, so fail loudly rather than print one.
            out.write(
                json.dumps(
                    {
                        "prompt": s.prompt,
                        "text": s.text,
                        "ids": s.ids,
                        "logprobs": [round(x, 6) for x in s.logprobs],
                        "finish_reason": s.finish_reason,
                    },
                    allow_nan=False,
                )
                + "\n"
            )
    elif stream:
        out.write("\n")
        for i, s in enumerate(samples[1:], start=2):
            out.write(f"--- sample {i} ---\n{prompt}{s.text}\n")
    else:  # --show-probs: the full texts after the table
        for i, s in enumerate(samples, start=1):
            out.write(f"--- sample {i} ---\n{prompt}{s.text}\n" if n > 1 else f"---\n{prompt}{s.text}\n")
    out.flush()
    return 0


def _build_eval(p: argparse.ArgumentParser) -> None:
    p.description = (
        "How good is a model? On the validation split: loss (nats/token), perplexity and bits per byte\n"
        "(comparable across tokenizers). On --samples generated samples: distinct-1/2/3 (diversity), repetition\n"
        "rate, and memorisation (share of generated 8-token n-grams found verbatim in the training split, and the\n"
        "longest generated span found verbatim)."
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN, metavar="DIR", help="run or checkpoint directory")
    _unset(p.add_argument("--data", metavar="DIR", help="prepared dataset"), "the one the checkpoint was trained on")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--max-tokens",
        type=_int_in(0, 2**62),
        default=0,
        metavar="N",
        help="evaluate only the first N validation tokens, a quick estimate; 0 = all",
    )
    p.add_argument("--batch-size", type=_int_in(1, 4096), default=16, metavar="B", help="windows per forward pass")
    p.add_argument(
        "--samples",
        type=_int_in(0, MAX_SAMPLES),
        default=10,
        metavar="N",
        help="generated samples for diversity and memorisation; 0 skips sampling",
    )
    _unset(
        p.add_argument("--prompt", default="", metavar="TEXT", help="prompt for the samples"),
        "empty, i.e. <|endoftext|>",
    )
    _add_sampling(p, min_new_tokens=1)
    p.set_defaults(max_new_tokens=200, seed=0)
    _add_device(p)
    _add_quantize(p)


def _run_eval(args) -> int:
    """`minigpt eval`: exact validation loss and bits per byte, then sample metrics."""
    from .data import Dataset
    from .errors import DataError
    from .evaluate import evaluate_checkpoint, format_eval, json_safe
    from .inference import load_for_inference

    params = _sampling_params(args)
    # float32 weights: the numbers should not depend on the device's fast dtype.
    ckpt, _ = load_for_inference(args.checkpoint, args.device, "float32", quantize=args.quantize)
    data_dir = args.data
    if data_dir is None:
        try:
            data_dir = ckpt.run["config"]["data"]["data"]
        except (TypeError, KeyError):
            data_dir = None
        if not isinstance(data_dir, str):
            raise MiniGPTError(
                f"{ckpt.path} does not record the dataset it was trained on; pass --data DIR (a prepared dataset "
                f"with the same tokenizer)"
            )
    try:
        data = Dataset(data_dir)
    except DataError as e:
        if args.data:
            raise
        # The path in run.json is relative to where training ran; say where it came from.
        raise DataError(f"{e} (the dataset recorded in {ckpt.path}/run.json; pass --data DIR to use another)") from None
    if data.tokenizer.to_str() != ckpt.tokenizer.to_str():
        raise MiniGPTError(
            f"the checkpoint's tokenizer ({ckpt.path}/tokenizer.json) "
            f"differs from the data's ({data.path}/tokenizer.json): "
            f"the token ids would mean different text; evaluate on data prepared with the checkpoint's tokenizer"
        )
    report = evaluate_checkpoint(
        ckpt.model,
        ckpt.tokenizer,
        data,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        samples=args.samples,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        params=params,
        seed=args.seed,
        progress=None,
    )
    report = {"checkpoint": str(ckpt.path), "data": str(data.path), **report}
    print(json.dumps(json_safe(report)) if args.json else format_eval(report))
    return 0


def _build_compare(p: argparse.ArgumentParser) -> None:
    p.description = (
        "One table of training runs: model kind, the dataset each was validated on, parameters, training time,\n"
        "tokens seen, val bits per byte (a note says when the runs were validated on different data)."
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by `minigpt train`")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument(
        "--png",
        metavar="FILE",
        help=f"plot val bits per byte against training time (needs matplotlib: pip install '{DIST}[viz]')",
    )


def _run_compare(args) -> int:
    """`minigpt compare RUN_DIR...`: the table (or --json), and --png the curves."""
    from .evaluate import format_compare, json_safe, load_run, plot_runs

    rows = [load_run(r) for r in args.runs]
    if args.png:
        plot_runs(rows, args.png)
    print(json.dumps(json_safe(rows)) if args.json else format_compare(rows))
    if args.png:
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def _build_attention(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Show what the model attends to. In the terminal: for each token, the tokens it attends to most, for one\n"
        "layer/head (or the average over heads/layers when not given). --html writes a self-contained interactive\n"
        "viewer (opens offline; with the logit lens of the same prompt); --npz the raw weights; --png a heatmap\n"
        "(needs matplotlib)."
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN, metavar="DIR", help="run or checkpoint directory")
    p.add_argument(
        "--prompt",
        required=True,
        metavar="TEXT",
        help="the text to look at (cropped to the last block_size tokens if longer)",
    )
    _unset(p.add_argument("--layer", type=int, metavar="L", help="layer index, 0-based"), "average over layers")
    _unset(p.add_argument("--head", type=int, metavar="H", help="head index, 0-based"), "average over heads")
    p.add_argument("--top", type=int, default=3, metavar="N", help="attended tokens listed per token")
    p.add_argument("--npz", metavar="FILE", help="write arrays weights [n_layer, n_head, T, T] and tokens")
    p.add_argument("--html", metavar="FILE", help="write the interactive viewer (one self-contained HTML file)")
    p.add_argument("--png", metavar="FILE", help="draw the chosen head's heatmap (needs matplotlib)")
    _add_device(p)


def _load_attention_model(path: str, device: str, feature: str | None = None):
    """Load a checkpoint whose model has attention and a tokenizer, or fail in one line.

    The kind is read from config.json before any weights, so a baseline checkpoint is
    reported as having no attention (nor, for `feature`, layers to read) rather than as
    whatever loading it fails on. Weights stay float32 (not bf16 on CUDA): these are
    numbers people read."""
    from . import models
    from .checkpoint import read_model_config, resolve_checkpoint
    from .errors import NoAttention
    from .inference import load_for_inference

    p = resolve_checkpoint(path)
    kind, _ = read_model_config(p)
    if not models.kind(kind, "model_type").cls.has_attention:
        raise MiniGPTError(f"{p}: {NoAttention(kind, feature)}")
    ckpt, _ = load_for_inference(p, device, "float32")
    return ckpt


def _run_attention(args) -> int:
    """`minigpt attention`: the terminal heatmap, and --npz/--html/--png files."""
    from .inspection import attention_maps, check_index, format_attention, write_html, write_png
    from .lens import logit_lens

    if not args.prompt:
        raise MiniGPTError("--prompt is empty: give at least one token of text to look at")
    if args.top < 1:
        raise MiniGPTError(f"--top must be >= 1, got {args.top}")
    if args.png:
        from .files import check_png_name

        check_png_name(args.png)  # before any work, as save_png checks it again on writing
        try:  # a missing extra is reported before any work or output
            import matplotlib.figure  # noqa: F401  (the viz extra, imported only when --png is asked for)
        except ImportError:
            raise MiniGPTError(f"--png needs matplotlib, which is not installed: pip install '{DIST}[viz]'") from None
    ckpt = _load_attention_model(args.checkpoint, args.device)
    cfg = ckpt.model.config
    check_index(args.layer, cfg.n_layer, "layer")  # before the forward pass: fail fast
    check_index(args.head, cfg.n_head, "head")
    maps = attention_maps(ckpt.model, ckpt.tokenizer, args.prompt)
    if maps.dropped:
        _note(
            "attention",
            f"the prompt is {len(maps) + maps.dropped} tokens; cropped to its last {len(maps)} (block_size)",
        )
    # Files first, terminal view after: `... | head` closing the pipe must not cost a file.
    written = []
    if args.npz:
        written.append(maps.save(args.npz))
    if args.html:
        lens = logit_lens(ckpt.model, ckpt.tokenizer, maps.ids)  # the page's "Logit lens" tab, same tokens
        written.append(write_html(maps, args.html, title=str(ckpt.path), layer=args.layer, head=args.head, lens=lens))
    if args.png:
        written.append(write_png(maps, args.png, args.layer, args.head))
    print(format_attention(maps, args.layer, args.head, args.top))
    for path in written:
        print(f"wrote {path}")
    return 0


def _build_heads(p: argparse.ArgumentParser) -> None:
    from .ablation import ABLATION_TOKENS

    p.description = (
        "Per-head statistics: entropy, mean attention distance, previous-token score, first-token (attention sink)\n"
        "score and induction score; names the likely previous-token and induction heads. With --ablate, what each\n"
        "head is worth: how much validation bits per byte rise when its output is removed (zero-ablation) or\n"
        "replaced by its mean (mean-ablation), on the first --ablate-tokens of the validation split, and how the\n"
        "next-token distribution after the text changes (KL, in bits)."
    )
    p.epilog = (
        "examples:\n"
        "  minigpt heads                                   # out/shakespeare, on a built-in passage\n"
        "  minigpt heads --ablate --html heads.html        # + ablation; the viewer with the Heads tab\n"
        "  minigpt heads --ablate --ablate-tokens 0 --json # on the whole validation split"
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN, metavar="DIR", help="run or checkpoint directory")
    _unset(
        p.add_argument("--prompt", metavar="TEXT", help="text for entropy/distance/previous-token/sink scores"),
        "a built-in passage",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the repeated random sequence for the induction score")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--html", metavar="FILE", help="write the viewer with the Heads tab (and the text's attention and logit lens)"
    )
    g = p.add_argument_group("ablation")
    g.add_argument(
        "--ablate",
        action="store_true",
        help="measure each head's zero- and mean-ablation cost (one pass over the sample per head and method)",
    )
    g.add_argument(
        "--ablate-tokens",
        type=_non_negative_int,
        default=ABLATION_TOKENS,
        metavar="N",
        help="score the first N tokens of the validation split; 0 = all of it",
    )
    _unset(
        g.add_argument("--data", metavar="DIR", help="prepared dataset whose val split is scored"),
        "the one the checkpoint was trained on",
    )
    g.add_argument("--batch-size", type=_int_in(1, 4096), default=16, metavar="B", help="windows per forward pass")
    _add_device(p)


def _dataset_for(ckpt, data_dir: str | None, command: str):
    """The prepared dataset to score a checkpoint on: --data, else the one its run.json
    records; its tokenizer must be the checkpoint's (else the ids would mean other text)."""
    from .data import Dataset
    from .errors import DataError

    given = data_dir is not None
    if not given:
        try:
            data_dir = ckpt.run["config"]["data"]["data"]
        except (TypeError, KeyError):
            data_dir = None
        if not isinstance(data_dir, str):
            raise MiniGPTError(
                f"{ckpt.path} does not record the dataset it was trained on; pass --data DIR (a prepared "
                f"dataset with the same tokenizer)"
            )
    try:
        data = Dataset(data_dir)
    except DataError as e:
        if given:
            raise
        raise DataError(f"{e} (the dataset recorded in {ckpt.path}/run.json; pass --data DIR to use another)") from None
    if data.tokenizer.to_str() != ckpt.tokenizer.to_str():
        raise MiniGPTError(
            f"the checkpoint's tokenizer ({ckpt.path}/tokenizer.json) differs from the data's "
            f"({data.path}/tokenizer.json): the token ids would mean different text; {command} needs data "
            f"prepared with the checkpoint's tokenizer"
        )
    data.check_token_ids("val", ckpt.model.config.vocab_size)
    return data


def _run_heads(args) -> int:
    """`minigpt heads`: the per-head statistics table (or --json), the named heads and, with
    --ablate, each head's ablation cost; --html the viewer."""
    from .inspection import DEFAULT_PASSAGE, head_report

    if args.prompt is not None and not args.prompt:
        raise MiniGPTError("--prompt is empty: leave it out to use the built-in passage")
    ckpt = _load_attention_model(args.checkpoint, args.device, "head ablation" if args.ablate else None)
    text = DEFAULT_PASSAGE if args.prompt is None else args.prompt
    data = _dataset_for(ckpt, args.data, "--ablate") if args.ablate else None  # a bad --data fails before any work
    report = head_report(ckpt.model, ckpt.tokenizer, text, seed=args.seed, title=str(ckpt.path))
    if report.maps.dropped and args.prompt is not None:
        _note(
            "heads",
            f"the prompt is {len(report.maps) + report.maps.dropped} tokens; cropped to its last "
            f"{len(report.maps)} (block_size)",
        )
    if data is not None:
        from .ablation import head_ablation

        report.ablation = head_ablation(
            ckpt.model,
            data.tokens("val"),
            ckpt.tokenizer.byte_lengths,
            max_tokens=args.ablate_tokens,
            tokenizer=ckpt.tokenizer,
            prompt=text,
            batch_size=args.batch_size,
            progress=None,
            source=str(data.path),
        )
    written = []
    if args.html:
        from .lens import logit_lens

        lens = logit_lens(ckpt.model, ckpt.tokenizer, report.maps.ids)
        written.append(report.write_html(args.html, lens=lens))
    if args.json:
        from .files import json_safe

        print(json.dumps(json_safe({"checkpoint": str(ckpt.path), **report.to_json()}), indent=2))
    else:
        print(
            f"{ckpt.path}: {len(report.maps)} tokens of "
            f"{'the built-in passage' if args.prompt is None else 'the prompt'}; "
            f"induction on repeated random sequences (seed {args.seed})"
        )
        print(report.format())
    for path in written:
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _build_lens(p: argparse.ArgumentParser) -> None:
    from .lens import LENS_TOP_K

    p.description = (
        "The logit lens: the residual stream after every layer put through the model's final norm and unembedding,\n"
        "i.e. what the model would predict if it stopped there. Prints each layer's top guess at every position of\n"
        "the prompt and the rank of the token that really comes next, then, for one --position, every layer's top-k\n"
        "and the direct logit attribution: what each head and MLP adds to one token's logit (the final norm's scale\n"
        "held fixed); the parts sum to the logit. --html writes the viewer's Logit lens tab; --json the numbers."
    )
    p.epilog = (
        "examples:\n"
        "  minigpt lens --prompt 'ROMEO: But soft, what light'\n"
        "  minigpt lens --prompt 'ROMEO: But soft, what light' --position 3 --token ':'\n"
        "  minigpt lens --prompt 'To be, or not to be' --html lens.html"
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN, metavar="DIR", help="run or checkpoint directory")
    p.add_argument(
        "--prompt",
        required=True,
        metavar="TEXT",
        help="the text to read (cropped to its last block_size tokens if longer)",
    )
    p.add_argument(
        "--top", type=_int_in(1, 100), default=LENS_TOP_K, metavar="K", help="predictions kept per layer and position"
    )
    _unset(
        p.add_argument("--position", type=int, metavar="P", help="the position (0-based) detailed and attributed"),
        "the last",
    )
    _unset(
        p.add_argument(
            "--token", metavar="TEXT", help="the token whose logit is attributed, as text that is one token"
        ),
        "the real next token; at the last position the model's top guess",
    )
    p.add_argument(
        "--parts",
        type=_non_negative_int,
        default=24,
        metavar="N",
        help="print only the N largest parts of the attribution (in model order); 0 = all",
    )
    p.add_argument("--json", action="store_true", help="print the lens and the attribution as JSON instead of tables")
    p.add_argument(
        "--html", metavar="FILE", help="write the viewer opened on its Logit lens tab (with the prompt's attention)"
    )
    _add_device(p)


def _run_lens(args) -> int:
    """`minigpt lens`: the terminal tables (or --json), and --html the viewer."""
    from .inspection import attention_maps, check_index, write_html
    from .lens import direct_logit_attribution, logit_lens

    if not args.prompt:
        raise MiniGPTError("--prompt is empty: give at least one token of text to look at")
    ckpt = _load_attention_model(args.checkpoint, args.device, "the logit lens")
    lens = logit_lens(ckpt.model, ckpt.tokenizer, args.prompt, top_k=args.top, title=str(ckpt.path))
    if lens.dropped:
        _note("lens", f"the prompt is {len(lens) + lens.dropped} tokens; cropped to its last {len(lens)} (block_size)")
    check_index(args.position, len(lens), "position")
    position = len(lens) - 1 if args.position is None else args.position
    attr = lens.attribution(position)
    if args.token is not None:
        attr = direct_logit_attribution(ckpt.model, ckpt.tokenizer, lens.ids, position=position, token=args.token)
    written = []
    if args.html:
        maps = attention_maps(ckpt.model, ckpt.tokenizer, args.prompt)
        written.append(write_html(maps, args.html, title=str(ckpt.path), lens=lens, tab="lens"))
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt.path), **lens.to_json(), "attribution": attr.to_json()}))
    else:
        print(lens.format(position, top=args.parts or None, attribution=attr))
    for path in written:
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _build_import_hf(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Convert a Hugging Face GPT-2 or Qwen3 directory (config.json + model.safetensors, or pytorch_model.bin read\n"
        "with weights_only=True; tokenizer.json, or GPT-2's vocab.json + merges.txt, if present) into a minigpt\n"
        "checkpoint directory. Other architectures are refused, naming their model_type."
    )
    p.add_argument(
        "hf_dir",
        metavar="HF_DIR",
        help="directory saved by transformers' save_pretrained (GPT2LMHeadModel or Qwen3ForCausalLM)",
    )
    p.add_argument("out", metavar="OUT_CKPT", help="checkpoint directory to write")
    p.add_argument("--force", action="store_true", help="replace OUT_CKPT if it exists")


def _run_import_hf(args) -> int:
    from .hf import import_hf

    path = import_hf(args.hf_dir, args.out, force=args.force)
    print(f"wrote {path}")
    return 0


def _build_export_hf(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write a minigpt GPT checkpoint as a Hugging Face directory that transformers and tokenizers load: GPT-2's\n"
        "block (learned positions, LayerNorm, GELU) as GPT2LMHeadModel, the modern block the cpu preset trains\n"
        "(rotary positions, RMSNorm, QK-norm, SwiGLU, no biases) as Qwen3ForCausalLM. AutoModelForCausalLM loads it\n"
        "and AutoTokenizer encodes exactly as minigpt does; generate() stops at <|endoftext|>. A block neither\n"
        "expresses exactly (sinusoidal positions, a logit soft-cap, a mix of the two) is refused, saying why."
    )
    p.add_argument("checkpoint", metavar="CKPT", help="run or checkpoint directory")
    p.add_argument("out", metavar="OUT_DIR", help="directory to write")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")


def _run_export_hf(args) -> int:
    from .hf import export_hf

    path = export_hf(args.checkpoint, args.out, force=args.force)
    print(f"wrote {path}")
    return 0


def _build_export_gguf(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write a minigpt GPT checkpoint as one GGUF file for llama.cpp, Ollama and LM Studio, tokenizer included:\n"
        "GPT-2's block as llama.cpp's gpt2 architecture, the modern block as qwen3. Needs: pip install gguf."
    )
    p.epilog = (
        "examples:\n  minigpt export-gguf out/shakespeare shakespeare.gguf --type q8_0\n"
        "  llama-cli -m shakespeare.gguf -p 'ROMEO:'"
    )
    p.add_argument("checkpoint", metavar="CKPT", help="run or checkpoint directory")
    p.add_argument("out", metavar="FILE.gguf", help="file to write")
    p.add_argument(
        "--type",
        choices=("f32", "f16", "q8_0"),
        default="f16",
        help="weights' type: f32, f16, or q8_0 (8-bit blocks of 32; norms stay f32)",
    )
    p.add_argument("--force", action="store_true", help="replace FILE.gguf if it exists")


def _run_export_gguf(args) -> int:
    from .gguf_export import export_gguf

    path = export_gguf(args.checkpoint, args.out, args.type, force=args.force)
    print(f"wrote {path}")
    return 0


def _build_quantize(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write an int8 copy of a GPT checkpoint: every Linear weight as int8 with one scale per output channel\n"
        "(safetensors, no pickle), about a quarter of the fp32 size. sample, eval and serve load it as int8."
    )
    p.add_argument("checkpoint", metavar="CKPT", help="run or checkpoint directory (float weights)")
    p.add_argument("out", metavar="OUT_CKPT", help="checkpoint directory to write")
    from .quantize import METHODS

    p.add_argument("--method", choices=METHODS, default=next(iter(METHODS)), help="quantization")
    p.add_argument("--force", action="store_true", help="replace OUT_CKPT if it exists")


def _run_quantize(args) -> int:
    from .quantize import quantize_checkpoint

    path = quantize_checkpoint(args.checkpoint, args.out, args.method, force=args.force)
    print(f"wrote {path}")
    return 0


def _build_serve(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Serve a checkpoint over HTTP: an OpenAI-compatible completions API (/v1/completions, /v1/models,\n"
        "/health) and, at /, a playground that shows each token's die and what it attended to.\n"
        f"Needs the serve extra: pip install '{DIST}[serve]'. Loopback only unless --host says otherwise."
    )
    p.epilog = (
        "examples:\n"
        "  minigpt serve                                   # out/shakespeare on http://127.0.0.1:8000\n"
        "  minigpt serve --checkpoint out/mine --port 8080\n"
        "  MINIGPT_API_KEY=secret minigpt serve --host 0.0.0.0 --allowed-host gpu-box.lan\n"
        "      # other machines reach it by IP or as gpu-box.lan; clients send 'Authorization: Bearer secret'"
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN, metavar="DIR", help="run or checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; '*' = any). IP addresses, "
        "localhost and --host's name are always allowed; other names are refused (DNS rebinding)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="require 'Authorization: Bearer KEY' (default: $MINIGPT_API_KEY, else none)",
    )
    p.add_argument(
        "--max-tokens-cap",
        type=int,
        default=1024,
        metavar="N",
        help="largest max_tokens a request may ask for",
    )
    p.add_argument(
        "--max-n",
        type=int,
        default=16,
        metavar="N",
        help="largest n (completions per prompt) a request may ask for",
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=4096,
        metavar="N",
        help="longest prompt a request may send, in tokens",
    )
    p.add_argument("--max-batch", type=int, default=32, metavar="N", help="rows decoded together in one batch")
    p.add_argument(
        "--queue-size",
        type=int,
        default=64,
        metavar="N",
        help="requests waiting beyond the running batch before 503",
    )
    _add_device(p)
    p.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="weights' dtype: auto = bf16 on CUDA, fp32 elsewhere"
    )
    _add_quantize(p)


def _run_serve(args) -> int:
    from .serve import ServeConfig, run_server  # the serve extra (starlette, uvicorn) loads only here

    cfg = ServeConfig(
        checkpoint=args.checkpoint,
        host=args.host,
        port=args.port,
        api_key=args.api_key if args.api_key is not None else (os.environ.get("MINIGPT_API_KEY") or None),
        max_tokens_cap=args.max_tokens_cap,
        max_n=args.max_n,
        max_prompt_tokens=args.max_prompt_tokens,
        max_batch=args.max_batch,
        queue_size=args.queue_size,
        device=args.device,
        dtype=args.dtype,
        allowed_hosts=tuple(args.allowed_host),
        quantize=args.quantize,
    )
    return run_server(cfg)


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "prepare": ("tokenize a text corpus into train/val token files", _build_prepare, _run_prepare),
    "train": ("train or fine-tune a GPT (or a baseline) on a prepared dataset or on text", _build_train, _run_train),
    "sample": ("generate text from a checkpoint", _build_sample, _run_sample),
    "eval": ("bits per byte, perplexity, diversity and memorisation of a checkpoint", _build_eval, _run_eval),
    "compare": ("compare training runs side by side", _build_compare, _run_compare),
    "attention": (
        "show attention weights for a prompt (terminal, HTML viewer, PNG, NPZ)",
        _build_attention,
        _run_attention,
    ),
    "heads": ("per-head statistics and ablation; find previous-token and induction heads", _build_heads, _run_heads),
    "lens": ("the logit lens and direct logit attribution: what each layer predicts", _build_lens, _run_lens),
    "import-hf": (
        "convert a Hugging Face GPT-2 or Qwen3 directory to a minigpt checkpoint",
        _build_import_hf,
        _run_import_hf,
    ),
    "export-hf": (
        "write a checkpoint as a Hugging Face directory (GPT-2, or Qwen3 for the modern block)",
        _build_export_hf,
        _run_export_hf,
    ),
    "export-gguf": (
        "write a checkpoint as one GGUF file (llama.cpp, Ollama, LM Studio)",
        _build_export_gguf,
        _run_export_gguf,
    ),
    "quantize": ("write an int8 copy of a checkpoint (faster CPU decoding)", _build_quantize, _run_quantize),
    "serve": ("serve a checkpoint: OpenAI-compatible API and a live playground", _build_serve, _run_serve),
}


def _top_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog=PROG,
        formatter_class=_formatter,
        description="minigpt: train a small GPT on your own text, sample from it, and look inside it.",
        epilog="commands:\n"
        + "\n".join(f"  {name:<11} {summary}" for name, (summary, _, _) in COMMANDS.items())
        + f"\n\nRun '{PROG} COMMAND --help' for a command's flags.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return p


def _not_utf8(argv: Sequence[str]) -> str | None:
    """The first argument that is not valid UTF-8 (Python hands such bytes over as lone
    surrogates), or None. Refused up front: as a prompt it cannot be encoded, and as a
    path it would be written into run.json and never read back."""
    for a in argv:
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:
            return a.encode("utf-8", "backslashreplace").decode("ascii", "replace")
    return None


def _stdout_to_devnull() -> None:
    """After a failed write to standard output, point it at /dev/null so that Python's
    own flush at exit does not print a second error."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if sys.stdout is None:  # started with standard output closed (`>&-`): nowhere to write results
        print(f"{PROG}: error: standard output is closed; redirect it to a file or /dev/null", file=sys.stderr)
        return 2
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in COMMANDS:
        if not argv:
            top.print_help()
            return 2
        top.parse_args(argv[:1])  # prints help/version, or a one-line error for an unknown command
        return 2
    name = argv[0]
    summary, build, run = COMMANDS[name]
    bad = _not_utf8(argv[1:])
    if bad is not None:
        print(f"{PROG} {name}: error: argument {bad!r} is not valid UTF-8 text", file=sys.stderr)
        return 2
    parser = _Parser(prog=f"{PROG} {name}", formatter_class=_formatter, description=summary)
    build(parser)
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as e:  # a usage error (one line already printed) is exit code 2, as a return value
        if e.code in (0, None):  # --help: argparse's own exit, as `minigpt --help`
            raise
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        code = run(args)
        sys.stdout.flush()  # inside the try: a full disk or closed pipe is reported here, once
        return code
    except BrokenPipeError:  # e.g. `minigpt sample | head`: the reader has all it wanted
        _stdout_to_devnull()
        return 0
    except FileError as e:
        print(f"{PROG} {name}: error: {e}", file=sys.stderr)
        return 1 if e.environmental else 2
    except MiniGPTError as e:
        print(f"{PROG} {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM raised as data.Terminated (it carries its signum)
        sig = getattr(e, "signum", signal.SIGINT)
        print(f"{PROG} {name}: {'terminated' if sig == signal.SIGTERM else 'interrupted'}", file=sys.stderr)
        return 128 + int(sig)
    except OSError as e:
        # The one place a stray OS error becomes a line: a write to standard output on a
        # full disk, a file that vanished, a device that failed. (Files minigpt writes
        # itself already raise FileError with their path.)
        err = os_error(
            e,
            e.filename if e.filename is not None else "standard output",
            "cannot write" if e.filename is None else "cannot access",
        )
        _stdout_to_devnull()
        print(f"{PROG} {name}: error: {err}", file=sys.stderr)
        return 1 if err.environmental else 2


def entry(command: str) -> None:
    """`python train.py ...` == `minigpt train ...` (and likewise sample.py)."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
