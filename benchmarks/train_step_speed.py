"""The default `cpu` preset's training step with each speed lever on and off, interleaved
in one run, its model FLOPs utilisation against a matrix-product peak measured in the
same run, and optionally beside the code of another checkout (today's main, say).

    python benchmarks/train_step_speed.py                            # every lever, 3 rounds
    python benchmarks/train_step_speed.py --base ../base             # + a worktree's code, "before"
    python benchmarks/train_step_speed.py --dropout 0.1 --variants off on drop-today drop-fast drop-fast-resid
    python benchmarks/train_step_speed.py --variants on compile      # torch.compile on the CPU
    python benchmarks/train_step_speed.py --base ../base --base-variants drop-fast --variants drop-fast  # before/after
    python benchmarks/train_step_speed.py --profile 10               # + the profiler's top ops per variant
    python benchmarks/train_step_speed.py --n-layer 5 --dropout 0.15 --variants compile-drop-resid \
        --rounds 1 --profile 20 --kernel-rows                        # the plan's compiled model, per kernel
    python benchmarks/train_step_speed.py --n-layer 5 --block-size 256 --batch-size 8 \
        --variants compile                                           # a plan's window on code
    python benchmarks/train_step_speed.py --n-layer 5 --batch-size 16 --block-size 128 --variants compile compile-h64
    python benchmarks/train_step_speed.py --rounds 1 --steps 3 --warmup 1 --batch-size 4   # smoke run
    python benchmarks/train_step_speed.py --n-embd 96 --n-head 3 --vocab 512 --dropout 0.3 \
        --variants drop-fast-resid@3 compile-drop-resid@5 compile-drop-resid@8   # a tiny text's plan, by depth

A step is what the trainer does (trainer.py): forward under the runtime's autocast (bf16
on a CPU with native bf16), backward, gradient clipping at the preset's 1.0, and every
optimizer's update (Muon for the block matrices, fused AdamW for the rest), on random ids
of the bundled corpus's vocabulary (2048) at the preset's batch x block (32 x 64; or
--batch-size, --block-size: the plan's windows are 16 x 128 and 8 x 256). The model is
built as the trainer builds it (`models.from_args`), its Linears on oneDNN, and called as
the trainer calls it: `loop.TrainingLoss(model)`, (x, y) -> the loss, compiled or not (a
checkout without it: the model, its output's `.loss`).

Each variant runs in its own worker process (its own allocator, threads and caches, as a
real run has), built once and warmed up; then rounds go round the workers, each timing
`--steps` steps in turn, so a slow minute on a shared machine hits every variant alike.
Reported: the median step over all rounds, tokens/s, the ratio to the first variant (of the
pooled medians, and the median and range of each round's ratio), and
MFU = flops_per_token x tokens/s / peak, where the peak is the best [2048 x 2048] x
[2048 x 2048] product rate (GFLOP/s) measured in a worker between the rounds, in the dtype
the step's products run in (bf16 on a CPU with native bf16; fp32 elsewhere, where bf16 is
emulated and slower: a bf16 peak there would put MFU above 100%). The FLOPs are
the model's (PaLM's 6N + attention); Muon's Newton-Schulz is not counted, as MFU usually
is not.

The levers (kernels.py, optim.py, model.py), each a variant's switch:
  fused_loss     kernels.cross_entropy instead of F.cross_entropy on fp32 logits
  batched_muon   optim.BatchedMuon instead of torch.optim.Muon
  fast_dropout   kernels.dropout's masks instead of F.dropout's (with --dropout > 0)
  weight_dropout dropout on the attention weights too (--attn-dropout; off keeps the flash kernel)
  onednn         eager fp32 products by oneDNN (`on-onednn`) or MKL (`on-mkl`); unset, the
                 trainer's choice (`onednn.faster_than_mkl`: oneDNN on a CPU not Intel's)
  compile        torch.compile the model with the trainer's options (then no oneDNN Linears, as
                 the trainer does; a planned run compiles where the time it saves pays for the
                 compile: plan.COMPILE_GAINS, COMPILATION)
  head_dim       heads of this width (`compile-h64`: n_head = n_embd / 64, the plan's heads from
                 100k tokens) instead of the preset's (--n-head sets every variant's)
A variant given as NAME@L builds its model L layers deep (the others: --n-layer's), so one run
sets the plan's eager step beside the deeper compiled one it predicts from it (plan.choose).
`--base DIR` adds a variant "base" running DIR's minigpt (e.g. `git worktree add ../base
main`) with its own defaults; a lever its code lacks is reported as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> levers; "off" is today's main computed by this checkout (every lever off)
OFF = dict(fused_loss=False, batched_muon=False, fast_dropout=False, weight_dropout=True, compile=False)
ON = dict(fused_loss=True, batched_muon=True, fast_dropout=True, weight_dropout=True, compile=False)
VARIANTS = {
    "off": OFF,
    "fused-loss": {**OFF, "fused_loss": True},
    "batched-muon": {**OFF, "batched_muon": True},
    "on": ON,
    # eager fp32 products by oneDNN or by MKL whatever the CPU (the others: onednn.faster_than_mkl)
    "on-onednn": {**ON, "onednn": True},
    "on-mkl": {**ON, "onednn": False},
    "compile": {**ON, "compile": True},
    # attention by the fp32 flash kernel at every context (model.COMPILED_EXPLICIT_MAX_T = 0)
    "compile-flash": {**ON, "compile": True, "flash_attention": True},
    # ... and attention written out in bf16 at every context (model.COMPILED_EXPLICIT_MAX_T = inf)
    "compile-explicit": {**ON, "compile": True, "explicit_attention": True},
    # with --dropout p: today's dropout, its masks drawn cheaply, and residual-only dropout
    "drop-today": {**ON, "fast_dropout": False, "dropout": True},
    "drop-fast": {**ON, "dropout": True},
    "drop-fast-resid": {**ON, "weight_dropout": False, "dropout": True},
    # the same under torch.compile (masks: kernels.keep_mask, one buffer the fused loops read)
    "compile-drop": {**ON, "compile": True, "dropout": True},
    "compile-drop-resid": {**ON, "compile": True, "weight_dropout": False, "dropout": True},
    # the plan's Muon weight decay (0.2) on top: one more pass over each block matrix a step
    "compile-muon-wd": {**ON, "compile": True, "muon_weight_decay": True},
    # heads of 64 (n_head = n_embd / 64) instead of the preset's 32: half the attention scores
    "compile-h64": {**ON, "compile": True, "head_dim": 64},
}


def levers_of(name: str) -> dict:
    """A variant's levers; NAME@L also sets its depth."""
    base, _, depth = name.partition("@")
    return {**VARIANTS[base], **({"n_layer": int(depth)} if depth else {})}


def variant(name: str) -> str:
    """argparse's check of a --variants entry."""
    base, _, depth = name.partition("@")
    if base not in VARIANTS or (depth and not depth.isdigit()):
        raise argparse.ArgumentTypeError(f"{name!r}: not NAME or NAME@LAYERS with NAME one of {', '.join(VARIANTS)}")
    return name


# ---- the worker: one variant, in its own process ----------------------------------------------


def worker(repo: str, levers: dict, args: dict) -> None:
    """Build the model and optimizers with `repo`'s minigpt, then serve commands on stdin
    (JSON lines): {"steps": n} times n steps, {"peak": 1} measures the product rate in the step's dtype,
    {"profile": n} profiles n steps. Answers one JSON line each on stdout."""
    sys.path.insert(0, repo)
    import torch

    from minigpt import models, onednn, runtime, trainer
    from minigpt.config import TrainConfig, apply_preset

    runtime.keep_freed_memory()
    cfg = TrainConfig()
    apply_preset(cfg, args["preset"])
    cfg.model.dropout = args["dropout"] if levers.get("dropout") else 0.0
    if hasattr(cfg.model, "attn_dropout"):  # a model setting since 0.5; a class switch before
        cfg.model.attn_dropout = levers["weight_dropout"]
    cfg.optim.batch_size = args["batch_size"] or cfg.optim.batch_size
    cfg.model.block_size = args.get("block_size") or cfg.model.block_size
    cfg.model.n_layer = levers.get("n_layer") or args.get("n_layer") or cfg.model.n_layer
    cfg.model.n_embd = args.get("n_embd") or cfg.model.n_embd
    cfg.model.n_head = args.get("n_head") or cfg.model.n_head
    if levers.get("head_dim"):
        cfg.model.n_head = cfg.model.n_embd // levers["head_dim"]
    if levers.get("muon_weight_decay"):
        cfg.optim.muon_weight_decay = 0.2
    if args.get("kernel_rows"):  # before compiling: the generated kernels then report to the profiler
        import torch._inductor.config

        torch._inductor.config.cpp.enable_kernel_profile = True
    B, T, V = cfg.optim.batch_size, cfg.model.block_size, args["vocab"]
    rt = runtime.init_runtime("cpu", args["dtype"])
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    model = models.from_args(cfg.model, V)
    model.check_inputs = False
    missing = []

    def lever(name, owner, attr):  # switch a lever where this code has it
        if hasattr(owner, attr):
            setattr(owner, attr, levers[name])
        elif levers[name] != OFF[name]:
            missing.append(name)

    from minigpt import model as model_mod

    lever("fused_loss", model, "fused_loss")
    if levers.get("flash_attention") or levers.get("explicit_attention"):  # a module constant: this process only
        model_mod.COMPILED_EXPLICIT_MAX_T = 0 if levers.get("flash_attention") else 1 << 30
    lever("fast_dropout", getattr(model_mod, "Dropout", object), "fast")  # a class switch: this process only
    if not hasattr(cfg.model, "attn_dropout"):
        lever("weight_dropout", model_mod.CausalSelfAttention, "weight_dropout")
    try:
        from minigpt.optim import make_optimizers

        optimizers = make_optimizers(model, cfg, rt.device, batched_muon=levers["batched_muon"])
    except ImportError:  # code without optim.py: the trainer's own
        optimizers = trainer.make_optimizers(model, cfg, rt.device)
        if levers["batched_muon"]:
            missing.append("batched_muon")
    from minigpt import loop

    # the trainer's (x, y) -> loss where this code has one (loop.TrainingLoss), else the model
    loss_of = getattr(loop, "TrainingLoss", None)
    target = loss_of(model) if loss_of is not None else model
    if levers["compile"]:
        options = loop.compile_options(rt.device) if hasattr(loop, "compile_options") else {}
        fwd = torch.compile(target, options=options)
    else:  # the trainer's choice (loop.wrap_for_device), unless the variant names one
        faster = getattr(onednn, "faster_than_mkl", lambda: True)  # code before it: always oneDNN
        if levers.get("onednn", faster()):
            onednn.use_onednn_linears(model)
        fwd = target
    model.train()
    clip = cfg.optim.grad_clip

    def step():
        x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
        with rt.autocast():
            out = fwd(x, y)
            loss = out if isinstance(out, torch.Tensor) else out.loss
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)

    for _ in range(args["warmup"]):
        step()
    info = dict(
        flops_per_token=model.flops_per_token(T),
        tokens_per_step=B * T,
        window=f"batch {B} x block {T}",
        missing=missing,
        dtype=str(rt.dtype),
        threads=torch.get_num_threads(),
    )
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if "steps" in cmd:
            times = []
            for _ in range(cmd["steps"]):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            print(json.dumps({"times": times}), flush=True)
        elif "peak" in cmd:
            print(json.dumps({"gflops": product_peak(torch, rt.dtype)}), flush=True)
        elif "profile" in cmd:
            from torch.profiler import profile

            with profile() as prof:
                for _ in range(cmd["profile"]):
                    step()
            rows = 30 if args.get("kernel_rows") else 15
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)
            print(json.dumps({"table": table}), flush=True)


def product_peak(torch, dtype, n: int = 2048, reps: int = 5) -> float:
    """The best rate (GFLOP/s) of a [n x n] x [n x n] product in `dtype` over `reps` tries."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ---- the driver -----------------------------------------------------------------------------------


class Worker:
    def __init__(self, name: str, repo: Path, levers: dict, args):
        spec = dict(
            preset=args.preset,
            dropout=args.dropout,
            batch_size=args.batch_size,
            block_size=args.block_size,
            vocab=args.vocab,
            dtype=args.dtype,
            warmup=args.warmup,
            threads=args.threads,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            kernel_rows=args.kernel_rows,
        )
        # the worker function comes from this file, whichever repo's minigpt it imports
        code = (
            f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import train_step_speed as t; "
            f"t.worker({str(repo)!r}, json.loads({json.dumps(json.dumps(levers))}), "
            f"json.loads({json.dumps(json.dumps(spec))}))"
        )
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=repo
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.name} died (exit code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["off", "fused-loss", "batched-muon", "on"],
        type=variant,
        help=f"each NAME or NAME@LAYERS, NAME one of {', '.join(VARIANTS)}",
    )
    ap.add_argument("--base", type=Path, default=None, help="also run this checkout's minigpt (the 'before' side)")
    ap.add_argument(
        "--base-variants",
        nargs="+",
        default=None,
        type=variant,
        help="the variants --base runs, each as base-NAME (default: every lever off, and with dropout if a variant has "
        "it: code older than the levers runs that way)",
    )
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--vocab", type=int, default=2048, help="vocabulary (the bundled corpus's: 2048)")
    ap.add_argument("--batch-size", type=int, default=0, help="0: the preset's")
    ap.add_argument(
        "--block-size", type=int, default=0, help="0: the preset's (the plan's windows: 128 x batch 16, 256 x 8)"
    )
    ap.add_argument("--n-layer", type=int, default=0, help="0: the preset's (the plan's compiled runs: 5)")
    ap.add_argument("--n-head", type=int, default=0, help="0: the preset's")
    ap.add_argument("--n-embd", type=int, default=0, help="0: the preset's (a tiny text's plan: 96)")
    ap.add_argument("--dropout", type=float, default=0.1, help="the p of the drop-* variants")
    ap.add_argument("--dtype", default="auto", help="the runtime's dtype policy (auto: bf16 where native)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50, help="steps timed per variant per round")
    ap.add_argument("--warmup", type=int, default=15, help="steps run once before timing (compilation too)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per worker (0: torch's default); on a "
        "machine shared with other jobs, 1 keeps a variant from waiting on a descheduled thread",
    )
    ap.add_argument("--profile", type=int, default=0, help="after timing, profile this many steps per variant")
    ap.add_argument(
        "--kernel-rows",
        action="store_true",
        help="with --profile: each compiled kernel its own row (inductor's enable_kernel_profile), 30 rows",
    )
    args = ap.parse_args()
    if args.base is not None and not (args.base / "minigpt" / "__init__.py").is_file():
        print(f"error: --base {args.base}: no minigpt package there", file=sys.stderr)
        raise SystemExit(2)

    plan = [(v, REPO, levers_of(v)) for v in args.variants]
    if args.base and args.base_variants:
        plan = [(f"base-{v}", args.base.resolve(), levers_of(v)) for v in args.base_variants] + plan
    elif args.base:  # today's code, without dropout and (if any variant has it) with
        plan = [("base", args.base.resolve(), OFF)] + plan
        if any(levers_of(v).get("dropout") for v in args.variants):
            plan.insert(1, ("base-drop", args.base.resolve(), {**OFF, "dropout": True}))
    workers: list[Worker] = []
    try:
        for name, repo, levers in plan:
            print(f"starting {name} ...", file=sys.stderr, flush=True)
            workers.append(Worker(name, repo, levers, args))
        report(workers, args)
    finally:  # a worker never outlives the run (an error, Ctrl-C, a closed pipe)
        for w in workers:
            w.proc.kill()
            w.proc.wait()


def report(workers: list[Worker], args) -> None:
    times: dict[str, list[float]] = {w.name: [] for w in workers}
    # each variant's round median over the first variant's in the same round: on a VM whose
    # speed moves by 10-40% within minutes, the pairs cancel what the pooled medians keep
    paired: dict[str, list[float]] = {w.name: [] for w in workers}
    peaks = [workers[0].ask(peak=1)["gflops"]]
    for r in range(args.rounds):
        this_round = {}
        for w in workers:
            this_round[w.name] = w.ask(steps=args.steps)["times"]
            times[w.name] += this_round[w.name]
        for n, t in this_round.items():
            paired[n].append(statistics.median(this_round[workers[0].name]) / statistics.median(t))
        peaks.append(workers[r % len(workers)].ask(peak=1)["gflops"])
        print(  # this round's median step, and the median of every step so far
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(
                f"{n} {statistics.median(t) * 1e3:.1f} ms (so far {statistics.median(times[n]) * 1e3:.1f})"
                for n, t in this_round.items()
            ),
            file=sys.stderr,
            flush=True,
        )
    peak = max(peaks)
    first = workers[0]
    base_ms = statistics.median(times[first.name])
    info = first.info
    print(
        f"\n{args.preset} preset, {info['tokens_per_step']} tokens a step ({info.get('window', '?')}), "
        f"{info['dtype']}, {info['threads']} threads; {args.rounds} rounds x {args.steps} steps, median step"
    )
    print(
        f"{info['dtype'].removeprefix('torch.')} product peak (2048^3): {peak:,.0f} GFLOP/s "
        f"(best of {len(peaks)} measurements in this run)"
    )
    print(
        f"{'variant':<16} {'ms/step':>8} {'tokens/s':>9} {'vs ' + first.name:>10} {'per round [range]':>20} "
        f"{'MFU':>6}  levers missing"
    )
    for w in workers:
        ms = statistics.median(times[w.name])
        tps = w.info["tokens_per_step"] / ms
        mfu = w.info["flops_per_token"] * tps / (peak * 1e9)
        pr = paired[w.name]
        print(
            f"{w.name:<16} {ms * 1e3:>8.2f} {tps:>9,.0f} {base_ms / ms:>9.2f}x "
            f"{statistics.median(pr):>8.2f}x [{min(pr):.2f}-{max(pr):.2f}] {mfu:>6.1%}  "
            f"{', '.join(w.info['missing']) or '-'}"
        )
    if args.profile:
        for w in workers:
            print(f"\n---- {w.name}: {args.profile} steps under torch.profiler ----")
            print(w.ask(profile=args.profile)["table"], flush=True)


if __name__ == "__main__":
    main()
