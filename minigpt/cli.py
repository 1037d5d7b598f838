"""The `minigpt` command line: argparse subcommands and exit codes.

Exit codes: 0 success; 2 bad input (one line on stderr, never a traceback); 130/143 a
training run stopped by SIGINT/SIGTERM after saving its checkpoint. Anything else that
escapes is a bug and keeps its traceback.

Each command's parser is built only when that command runs, so `minigpt --help` and
`minigpt prepare ...` do not pay for importing everything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence

from .errors import MiniGPTError

PROG = "minigpt"
DEFAULT_RUN = "out/shakespeare"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage block is one --help away)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=100)


def _non_negative_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


# ---- the commands: (summary, parser builder, runner) ----------------------------------------


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps (default: auto)")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (the die)")
    g.add_argument("--max-new-tokens", type=int, default=500, metavar="N", help="tokens to generate per sample (default: 500)")
    g.add_argument("--temperature", type=float, default=0.8, metavar="T", help="divide logits by T; 0 = greedy argmax (default: 0.8)")
    g.add_argument("--top-k", type=int, default=200, metavar="K", help="keep only the K most likely tokens; 0 = off (default: 200)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="keep the smallest set of tokens with total probability >= P; 1 = off (default: 1)")
    g.add_argument("--min-p", type=float, default=0.0, metavar="P", help="drop tokens below P x the top probability; 0 = off (default: 0)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="make tokens already in the text less likely (CTRL); 1 = off (default: 1)")
    g.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same text (default: random)")


def _sampling_params(args):
    from .sampling import SamplingParams

    if args.max_new_tokens < 0:
        raise MiniGPTError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    return SamplingParams.from_flags(args)


def _build_prepare(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Turn text into a prepared dataset: a byte-level BPE tokenizer trained on the training split, and the\n"
        "token ids of both splits. Writes DIR/train.bin, DIR/val.bin, DIR/tokenizer.json and DIR/meta.json.\n"
        "Each input file is one document; documents are separated by <|endoftext|>. The validation split is the\n"
        "last --val-fraction of the text (nanoGPT's split)."
    )
    p.epilog = "example:\n  minigpt prepare ../shared/data/tinyshakespeare.txt --out build/ts --vocab-size 1024"
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="a text file, a .gz text file, a directory (all text files under it, sorted) or a glob")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if needed)")
    p.add_argument("--vocab-size", type=int, default=4096, metavar="N", help="tokenizer vocabulary: 256 bytes + <|endoftext|> + merges; 257 = plain bytes (default: 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F", help="share of the text (at its end) held out for validation (default: 0.1)")
    p.add_argument("--tokenizer", metavar="FILE", help="reuse this tokenizer.json instead of training one (e.g. GPT-2's)")
    p.add_argument("--force", action="store_true", help="replace a different dataset already in DIR")
    p.add_argument("--replace-invalid", action="store_true", help="replace bytes that are not UTF-8 with U+FFFD (with a warning) instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_prepare(args) -> int:
    from .data import prepare

    meta = prepare(
        args.inputs, args.out, vocab_size=args.vocab_size, val_fraction=args.val_fraction, tokenizer=args.tokenizer,
        force=args.force, replace_invalid=args.replace_invalid, progress=not args.quiet,
    )
    s = meta["splits"]
    print(
        f"{args.out}: vocab {meta['vocab_size']} ({meta['dtype']}), train {s['train']['tokens']:,} tokens "
        f"({s['train']['bytes']:,} bytes), val {s['val']['tokens']:,} tokens ({s['val']['bytes']:,} bytes), "
        f"{len(meta['sources'])} source file(s)"
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
        "  torchrun --nproc_per_node=4 train.py --preset gpt2 --data data/owt --out out/gpt2\n"
        "\n"
        "Ctrl-C or SIGTERM saves a checkpoint and exits (130/143); --resume continues."
    )
    add_train_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_train(args) -> int:
    from .config import explicit_overrides, resolve_train_config
    from .trainer import train

    cfg = resolve_train_config(args)
    summary = train(cfg, explicit=explicit_overrides(args), progress=not args.quiet)
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
    p.add_argument("--checkpoint", default=DEFAULT_RUN, metavar="DIR", help=f"a run directory (its best checkpoint, else its last) or a checkpoint directory (default: {DEFAULT_RUN})")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", metavar="TEXT", help="text to continue (default: read standard input if it is not a terminal, else empty)")
    src.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 file")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples to draw (in one batch) (default: 1)")
    _add_sampling(p)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end a sample just before this text (repeatable)")
    _add_device(p)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="weights' dtype: auto = bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the decode step (default: on for CUDA)")
    p.add_argument("--json", action="store_true", help='print one JSON object per sample: {"prompt", "text", "ids", "logprobs", "finish_reason"}')
    p.add_argument("--show-probs", type=_non_negative_int, default=0, metavar="K", help="for every generated token, print the K most likely candidates after temperature/top-k/top-p and the one the die picked")


def _read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file is not None:
        try:
            data = open(args.prompt_file, "rb").read()
        except OSError as e:
            raise MiniGPTError(f"--prompt-file {args.prompt_file}: {e.strerror or e}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MiniGPTError(f"--prompt-file {args.prompt_file}: not UTF-8 text (invalid byte at offset {e.start})") from None
    if not sys.stdin.isatty():
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MiniGPTError(f"standard input is not UTF-8 text (invalid byte at offset {e.start})") from None
    return ""


def _run_sample(args) -> int:
    import torch

    from .completion import complete

    params = _sampling_params(args)
    if args.num_samples < 1:
        raise MiniGPTError(f"--num-samples must be >= 1, got {args.num_samples}")
    prompt = _read_prompt(args)
    from .inference import load_for_inference

    ckpt, device = load_for_inference(args.checkpoint, args.device, args.dtype)
    tok = ckpt.tokenizer
    compile_ = args.compile if args.compile is not None else device.type == "cuda"
    out = sys.stdout
    stream = not args.json and not args.show_probs
    n = args.num_samples

    def on_text(row: int, text: str) -> None:
        if row == 0 and stream:
            out.write(text)
            out.flush()

    def on_step(step) -> None:
        for b in range(n):
            if not step.new[b]:
                continue
            tag = f"[{b + 1}] " if n > 1 else ""
            picked = step.tokens[b]
            cands = "  ".join(  # candidates cut by top-k/top-p/min-p (probability 0) are left out
                f"{'*' if i == picked else ' '}{tok.token_str(i)!r} {p:.3f}"
                for i, p in zip(step.top_ids[b], step.top_probs[b])
                if p > 0 or i == picked
            )
            p_picked = torch.tensor(step.logprobs[b]).exp().item()
            out.write(f"{tag}picked {tok.token_str(picked)!r:<14} p={p_picked:.3f} | {cands}\n")

    if stream:
        if n > 1:
            out.write("--- sample 1 ---\n")
        out.write(prompt)
        out.flush()
    samples = complete(
        ckpt.model, tok, prompt, num_samples=n, max_new_tokens=args.max_new_tokens, params=params, seed=args.seed,
        stop=args.stop, on_text=on_text if stream else None, on_step=on_step if args.show_probs else None,
        top=args.show_probs, compile=compile_,
    )
    if args.json:
        for s in samples:
            out.write(json.dumps({"prompt": s.prompt, "text": s.text, "ids": s.ids, "logprobs": [round(x, 6) for x in s.logprobs], "finish_reason": s.finish_reason}) + "\n")
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
    p.add_argument("--checkpoint", default=DEFAULT_RUN, metavar="DIR", help=f"run or checkpoint directory (default: {DEFAULT_RUN})")
    p.add_argument("--data", metavar="DIR", help="prepared dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--max-tokens", type=int, default=0, metavar="N", help="evaluate only the first N validation tokens (a quick estimate; default: all)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="windows per forward pass (default: 16)")
    p.add_argument("--samples", type=int, default=10, metavar="N", help="generated samples for diversity and memorisation (default: 10)")
    p.add_argument("--prompt", default="", metavar="TEXT", help="prompt for the samples (default: empty, i.e. <|endoftext|>)")
    _add_sampling(p)
    p.set_defaults(max_new_tokens=200, seed=0)
    _add_device(p)


def _run_eval(args) -> int:
    from .evaluate import run_eval_cli

    return run_eval_cli(args)


def _build_compare(p: argparse.ArgumentParser) -> None:
    p.description = "One table of training runs: model kind, parameters, training time, tokens seen, val bits per byte."
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by `minigpt train`")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--png", metavar="FILE", help="plot val bits per byte against training time (needs matplotlib: pip install 'minigpt[viz]')")


def _run_compare(args) -> int:
    from .evaluate import run_compare_cli

    return run_compare_cli(args)


def _build_attention(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Show what the model attends to. In the terminal: for each token, the tokens it attends to most, for one\n"
        "layer/head (or the average over heads/layers when not given). --html writes a self-contained interactive\n"
        "viewer (opens offline); --npz the raw weights; --png a heatmap (needs matplotlib)."
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN, metavar="DIR", help=f"run or checkpoint directory (default: {DEFAULT_RUN})")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the text to look at (cropped to the last block_size tokens if longer)")
    p.add_argument("--layer", type=int, metavar="L", help="layer index, 0-based (default: average over layers)")
    p.add_argument("--head", type=int, metavar="H", help="head index, 0-based (default: average over heads)")
    p.add_argument("--top", type=int, default=3, metavar="N", help="attended tokens listed per token (default: 3)")
    p.add_argument("--npz", metavar="FILE", help="write arrays weights [n_layer, n_head, T, T] and tokens")
    p.add_argument("--html", metavar="FILE", help="write the interactive viewer (one self-contained HTML file)")
    p.add_argument("--png", metavar="FILE", help="draw the chosen head's heatmap (needs matplotlib)")
    _add_device(p)


def _run_attention(args) -> int:
    from .inspection import run_attention_cli

    return run_attention_cli(args)


def _build_heads(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Per-head statistics: entropy, mean attention distance, previous-token score, first-token (attention sink)\n"
        "score and induction score; names the likely previous-token and induction heads."
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN, metavar="DIR", help=f"run or checkpoint directory (default: {DEFAULT_RUN})")
    p.add_argument("--prompt", metavar="TEXT", help="text for entropy/distance/previous-token/sink scores (default: a built-in passage)")
    p.add_argument("--seed", type=int, default=0, help="seed of the repeated random sequence for the induction score (default: 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_device(p)


def _run_heads(args) -> int:
    from .inspection import run_heads_cli

    return run_heads_cli(args)


def _build_import_hf(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Convert a Hugging Face GPT-2 directory (config.json + model.safetensors, or pytorch_model.bin read with\n"
        "weights_only=True; tokenizer.json if present) into a minigpt checkpoint directory."
    )
    p.add_argument("hf_dir", metavar="HF_DIR", help="directory saved by transformers' GPT2LMHeadModel.save_pretrained")
    p.add_argument("out", metavar="OUT_CKPT", help="checkpoint directory to write")
    p.add_argument("--force", action="store_true", help="replace OUT_CKPT if it exists")


def _run_import_hf(args) -> int:
    from .hf import import_hf

    path = import_hf(args.hf_dir, args.out, force=args.force)
    print(f"wrote {path}")
    return 0


def _build_export_hf(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write a minigpt GPT checkpoint as a Hugging Face GPT-2 directory that transformers.GPT2LMHeadModel\n"
        "and tokenizers load. Only learned positions can be exported: GPT-2 has no sinusoidal or rotary encoding."
    )
    p.add_argument("checkpoint", metavar="CKPT", help="run or checkpoint directory")
    p.add_argument("out", metavar="OUT_DIR", help="directory to write")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")


def _run_export_hf(args) -> int:
    from .hf import export_hf

    path = export_hf(args.checkpoint, args.out, force=args.force)
    print(f"wrote {path}")
    return 0


def _build_serve(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Serve a checkpoint over HTTP: an OpenAI-compatible completions API (/v1/completions, /v1/models,\n"
        "/health) and, at /, a playground that shows each token's die and what it attended to.\n"
        "Needs the serve extra: pip install 'minigpt[serve]'. Loopback only unless --host says otherwise."
    )
    p.epilog = (
        "examples:\n"
        "  minigpt serve                                   # out/shakespeare on http://127.0.0.1:8000\n"
        "  minigpt serve --checkpoint out/mine --port 8080\n"
        "  MINIGPT_API_KEY=secret minigpt serve --host 0.0.0.0   # clients send 'Authorization: Bearer secret'"
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN, metavar="DIR", help=f"run or checkpoint directory (default: {DEFAULT_RUN})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--api-key", metavar="KEY", default=None, help="require 'Authorization: Bearer KEY' (default: $MINIGPT_API_KEY, else none)")
    p.add_argument("--max-tokens-cap", type=int, default=1024, metavar="N", help="largest max_tokens a request may ask for (default: 1024)")
    p.add_argument("--max-n", type=int, default=16, metavar="N", help="largest n (completions per prompt) a request may ask for (default: 16)")
    p.add_argument("--max-prompt-tokens", type=int, default=4096, metavar="N", help="longest prompt a request may send, in tokens (default: 4096)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N", help="rows decoded together in one batch (default: 32)")
    p.add_argument("--queue-size", type=int, default=64, metavar="N", help="requests waiting beyond the running batch before 503 (default: 64)")
    _add_device(p)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="weights' dtype: auto = bf16 on CUDA, fp32 elsewhere")


def _run_serve(args) -> int:
    from .serve import ServeConfig, run_server  # the serve extra (starlette, uvicorn) loads only here

    cfg = ServeConfig(
        checkpoint=args.checkpoint, host=args.host, port=args.port,
        api_key=args.api_key if args.api_key is not None else (os.environ.get("MINIGPT_API_KEY") or None),
        max_tokens_cap=args.max_tokens_cap, max_n=args.max_n, max_prompt_tokens=args.max_prompt_tokens,
        max_batch=args.max_batch, queue_size=args.queue_size, device=args.device, dtype=args.dtype,
    )
    return run_server(cfg)


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "prepare": ("tokenize a text corpus into train/val token files", _build_prepare, _run_prepare),
    "train": ("train a GPT (or a baseline) on a prepared dataset", _build_train, _run_train),
    "sample": ("generate text from a checkpoint", _build_sample, _run_sample),
    "eval": ("bits per byte, perplexity, diversity and memorisation of a checkpoint", _build_eval, _run_eval),
    "compare": ("compare training runs side by side", _build_compare, _run_compare),
    "attention": ("show attention weights for a prompt (terminal, HTML viewer, PNG, NPZ)", _build_attention, _run_attention),
    "heads": ("per-head attention statistics; find previous-token and induction heads", _build_heads, _run_heads),
    "import-hf": ("convert a Hugging Face GPT-2 directory to a minigpt checkpoint", _build_import_hf, _run_import_hf),
    "export-hf": ("write a checkpoint as a Hugging Face GPT-2 directory", _build_export_hf, _run_export_hf),
    "serve": ("serve a checkpoint: OpenAI-compatible API and a live playground", _build_serve, _run_serve),
}


def _top_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog=PROG,
        formatter_class=_formatter,
        description="minigpt: train a small GPT on your own text, sample from it, and look inside it.",
        epilog="commands:\n" + "\n".join(f"  {name:<11} {summary}" for name, (summary, _, _) in COMMANDS.items())
        + f"\n\nRun '{PROG} COMMAND --help' for a command's flags.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in COMMANDS:
        if not argv:
            top.print_help()
            return 2
        top.parse_args(argv[:1])  # prints help/version, or a one-line error for an unknown command
        return 2
    name = argv[0]
    summary, build, run = COMMANDS[name]
    parser = _Parser(prog=f"{PROG} {name}", formatter_class=_formatter, description=summary)
    build(parser)
    args = parser.parse_args(argv[1:])
    try:
        return run(args)
    except MiniGPTError as e:
        print(f"{PROG} {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {name}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:  # e.g. `minigpt sample | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry(command: str) -> None:
    """`python train.py ...` == `minigpt train ...` (and likewise sample.py)."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
