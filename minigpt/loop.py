"""One optimizer step and what it runs on: the pieces the trainer's loop is made of.

    lr_at             the learning rate at a step (warmup, then cosine or warmup-stable-decay)
    TrainingLoss      what the step calls: (x, y) -> the model's loss, the compiled graph's one output
    wrap_for_device   that, prepared for the device: oneDNN linears where faster, torch.compile, DDP
    compile_first     compile before the first step (its time kept out of the pace), or fall back
    train_step        forward and backward over the micro-batches, clip, optimizer step
    Stopwatch         training time: wall-clock minus the pauses for evaluation and checkpoints
    Signals           Ctrl-C / SIGTERM become a flag the loop reads at the end of a step

No I/O and no decisions about how long to train: those are the trainer's (trainer.py) and the
plan's (plan.py).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import onednn
from .plan import cooldown_start
from .runtime import Runtime


def lr_at(
    step: int, lr: float, min_lr: float, warmup: int, decay_steps: int, schedule: str = "cosine", cooldown: float = 0.4
) -> float:
    """The learning rate at `step`: linear warmup to `lr` over `warmup` steps (step 0
    starts at lr / warmup, not at 0), then, up to `decay_steps` (and `min_lr` after):

    - cosine: cosine decay from `lr` to `min_lr` (GPT-2, nanoGPT);
    - wsd ("warmup-stable-decay", Hägele et al. 2024): constant at `lr`, then a linear
      cooldown to `min_lr` over the last `cooldown` share of the steps. Only the cooldown
      depends on the run's length, so a run can be extended (or fixed from a time budget)
      late, and the constant phase explores at the full rate for longer.

    >>> lr_at(500, 1.0, 0.1, 0, 1000, "wsd", 0.4), lr_at(800, 1.0, 0.1, 0, 1000, "wsd", 0.4)
    (1.0, 0.55)
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= decay_steps:
        return min_lr
    if schedule == "wsd":
        start = cooldown_start(decay_steps, cooldown)
        if step < start:
            return lr
        return lr - (step - start) / max(1, decay_steps - start) * (lr - min_lr)
    progress = (step - warmup) / max(1, decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    """Every param group runs at `lr` times its own `lr_scale` (Muon's group is faster)."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]


class TrainingLoss(nn.Module):
    """What a training step asks of the model: (x, y) -> the mean loss, and nothing else.

    Compiled, this is the graph's one output. Compiling the model itself would return its
    logits too: a [B*T, V] output that needs a gradient, so the compiled backward is handed
    one of zeros, filled and read every step for a tensor the step never looks at (at the
    plan's shape a [32, 64, 2048] fill, 0.3-1.0 ms under the profiler; with the rest, the
    plan's compiled step 1.05x: BENCHMARKS.md, eighteenth pass)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, y).loss


@dataclass
class Wrapped:
    """The model's loss as the training step calls it (`forward(x, y)`: a TrainingLoss,
    compiled or under DDP as wrap_for_device chose), and how it was wrapped."""

    forward: nn.Module
    compiled: bool


def wrap_for_device(model: nn.Module, rt: Runtime, compile: bool | None, *, cpp_wrapper: bool = True) -> Wrapped:
    """The one place that prepares the model for the device. The parameters stay the
    model's own (the optimizers, checkpoints and evaluation use `model` itself).

    - CPU, not compiled: fp32 matrix products by oneDNN (AVX-512) instead of MKL where MKL
      takes its AVX2 path (`onednn.faster_than_mkl`: a CPU not Intel's), ~1.9x a GPT-2-sized
      layer's forward + backward there; parameters and state_dict are untouched;
    - torch.compile: on CUDA by default (`compile` None), on request elsewhere (on the CPU
      with inductor's C++ wrapper unless `cpp_wrapper` is False: compile_options);
    - torchrun: DistributedDataParallel, which all-reduces the gradients in backward.
    """
    use_compile = compile if compile is not None else rt.device.type == "cuda"
    if rt.device.type == "cpu" and not use_compile and onednn.faster_than_mkl():
        onednn.use_onednn_linears(model)
    options = compile_options(rt.device, cpp_wrapper=cpp_wrapper)
    loss = TrainingLoss(model)
    forward = torch.compile(loss, options=options) if use_compile else loss
    if rt.distributed:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    return Wrapped(forward, use_compile)


def compile_options(device: torch.device, *, cpp_wrapper: bool = True) -> dict[str, Any]:
    """Inductor's options for the model. On the CPU:

    - a random draw in the graph runs as the eager op (`fallback_random`): the model draws
      one seed per dropout call there (model.Dropout), and the compiler's own generator would
      redo that draw inside every iteration of the fused loop it lands in (measured: 8x the
      masked product's time); it also makes a seed give the same masks compiled or not;
    - the code that calls the compiled kernels is C++ (`cpp_wrapper`), not Python: a step
      makes ~100 kernel and library calls, and their Python wrapper cost ~1.7 ms of an 18 ms
      step at nanoGPT's CPU shape (BENCHMARKS.md, fourteenth pass: that step 1.05-1.10x, the
      trainer there 1.02-1.08x, the plan's step 1.04x);
    - and that C++ is built as two files, the calls and the kernels, by two compilers at once
      (`cpp_wrapper_build_separate`): as one file, the backward's took one compiler ~10 s of
      a first compile's ~31 s (BENCHMARKS.md, fifteenth pass: 31-32 s -> 24-25 s)."""
    if device.type != "cpu":
        return {}
    wrapper = {"cpp_wrapper": True, "cpp_wrapper_build_separate": True} if cpp_wrapper else {}
    return {"fallback_random": True, **wrapper}


def _check_the_cpu_meanwhile() -> None:
    """Inductor's first compile on a machine builds and loads a test program for each vector
    instruction set the CPU has (four here: ~8 s of one core, BENCHMARKS.md, fifteenth pass)
    the moment it first generates code. Started now, on a thread, that waits on the compiler
    while tracing runs on the other core. Inductor's own cache (a lock per test program)
    keeps the two from building one twice; a later compile finds them built."""
    try:  # imported only here, lazily: inductor is loaded by a compile, never by an eager run
        from torch._inductor.cpu_vec_isa import valid_vec_isa_list
    except ImportError:  # (a private function: a torch without it compiles as before)
        return
    threading.Thread(target=valid_vec_isa_list, name="minigpt-cpu-isa", daemon=True).start()


def compile_first(wrapped: Wrapped, model: nn.Module, rt: Runtime, batch: tuple[torch.Tensor, torch.Tensor]) -> Wrapped:
    """torch.compile compiles at the first call: on the CPU, compile now, with one forward
    and backward of `batch` (its gradients dropped and the random state put back, so the run
    is what it would have been), so that the caller can keep the time out of its measured
    pace. Where that fails, compile once more without the C++ wrapper (a graph the wrapper
    cannot call then loses only the wrapper's few percent, not the compile's ~1.4x); where
    that fails too (a machine without a C++ compiler, say), say so in one line and return
    the model wrapped without it. Other devices, and DDP (every rank must take the same
    path), compile at the first step as before. (TorchDynamo compiles again for another
    torch thread count: see runtime.ThreadGovernor's `recompiles`.)"""
    if not wrapped.compiled or rt.device.type != "cpu" or rt.distributed:
        return wrapped
    _check_the_cpu_meanwhile()
    rng = torch.get_rng_state()
    try:
        failed = _first_call(wrapped.forward, model, rt, batch)
        if failed is None:
            return wrapped
        rt.print(f"compile: failed ({failed}); compiling again without the C++ wrapper", file=sys.stderr)
        torch.compiler.reset()
        retry = wrap_for_device(model, rt, True, cpp_wrapper=False)
        failed = _first_call(retry.forward, model, rt, batch)
        if failed is None:
            return retry
        rt.print(f"compile: failed ({failed}); training without it", file=sys.stderr)
        torch.compiler.reset()
        return wrap_for_device(model, rt, False)
    finally:
        torch.set_rng_state(rng)


def _first_call(
    forward: nn.Module, model: nn.Module, rt: Runtime, batch: tuple[torch.Tensor, torch.Tensor]
) -> str | None:
    """One forward and backward of `batch` through `forward` (which compiles it), the
    gradients dropped: None, or the first line of why it failed."""
    t0 = time.perf_counter()
    try:
        x, y = batch
        with warnings.catch_warnings():
            # Tracing QK-norm's RMSNorm on the bf16 queries and keys of attention written
            # out in bf16 (its gains stay fp32) warns that the fused kernel cannot take mixed
            # dtypes; the compiled graph fuses the norm itself, so the warning says nothing.
            warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
            with rt.autocast():
                loss = forward(x, y)
        loss.backward()
        rt.print(f"compiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return None
    except Exception as e:  # noqa: BLE001 - any compiler failure: the caller tries without it
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    finally:
        for p in model.parameters():
            p.grad = None


def train_step(
    wrapped: Wrapped,
    model: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    batches,
    *,
    grad_accum: int,
    grad_clip: float,
    rt: Runtime,
) -> torch.Tensor:
    """One optimizer step: forward and backward over `grad_accum` micro-batches (`batches`
    yields them as (x, y)), clip the global gradient norm, step every optimizer, zero the
    gradients. Returns the step's mean loss as a device tensor (no host sync: the caller
    decides when to look at it).

    Under DDP the gradients are all-reduced only on the last micro-batch (`no_sync` before
    it). The loss of each micro-batch is divided by grad_accum, so the summed gradients are
    those of the mean over the whole step's windows."""
    step_loss = torch.zeros((), device=rt.device)
    for micro, (x, y) in enumerate(batches):
        sync = (not rt.distributed) or micro == grad_accum - 1
        with wrapped.forward.no_sync() if not sync else nullcontext():
            with rt.autocast():
                loss = wrapped.forward(x, y) / grad_accum
            scaler.scale(loss).backward()
        step_loss += loss.detach()
    if grad_clip > 0:
        for opt in optimizers:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return step_loss


class Stopwatch:
    """Training time: wall-clock time minus the pauses for evaluation and checkpoints."""

    def __init__(self, elapsed: float = 0.0):
        self.elapsed = elapsed
        self._since = time.perf_counter()

    def read(self) -> float:
        now = time.perf_counter()
        self.elapsed += now - self._since
        self._since = now
        return self.elapsed

    @contextmanager
    def paused(self):
        self.read()
        try:
            yield
        finally:
            self._since = time.perf_counter()


class Signals:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the step and
    exits. A second Ctrl-C aborts at once (the last checkpoint is still intact)."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            raise KeyboardInterrupt
        self.received = signum
        tqdm.write(
            f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (again to abort)", file=sys.stderr
        )

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
