"""Where code runs: the device, the compute dtype, and (under torchrun) the process group.

One small object covers a CPU, one GPU and many processes launched by `torchrun`, so the
trainer reads the same either way; side effects (printing, writing files) happen on
rank 0 only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError, MiniGPTError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """auto: cuda > mps > cpu. An explicit device that is not available is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MiniGPTError(
                f"device {name} is not available: this torch build or machine has no CUDA GPU (use --device cpu)"
            )
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise MiniGPTError(f"device {name} is not available: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise MiniGPTError(f"device {name} is not available on this machine (use --device cpu)")
    elif dev.type != "cpu":
        raise ConfigError(f"device: unsupported device type {dev.type!r} (use auto, cpu, cuda, cuda:N or mps)")
    return dev


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), where
    oneDNN's bf16 matmul runs ~4x its fp32 one (544 vs 136 GFLOP/s on a [768, 128] x
    [128, 384] product here). Elsewhere bf16 is emulated, and slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without these probes: assume not
        return False


def pick_dtype(name: str, device: torch.device, *, training: bool = False) -> torch.dtype:
    """auto: bf16 on CUDA where supported (else fp16 with a GradScaler); for training on a
    CPU with native bf16 (`cpu_has_bf16`), bf16 autocast (parameters and optimizer state
    stay fp32: only the matrix products round to bf16), ~1.4x the fp32 step at nanoGPT's
    CPU shape (BENCHMARKS.md); fp32 elsewhere, and for inference on the CPU
    (evaluation stays exact, and a batch-1 decode step is bound by memory, not FLOPs)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and training and cpu_has_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype: must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("dtype: float16 needs a GPU; on the CPU use float32 or bfloat16")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("dtype: this GPU does not support bfloat16; use float16 or auto")
    return dtype


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype  # compute dtype inside autocast; parameters stay float32
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """Mixed precision where it pays (CUDA bf16/fp16, or CPU bf16 if asked)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def eval_autocast(self):
        """Autocast for evaluation: as for training, except on the CPU, where evaluation runs
        in fp32 so the trainer's eval lines match `minigpt eval` (which loads in fp32); a
        forward pass alone over a few batches costs little there."""
        if self.device.type == "cpu":
            return contextlib.nullcontext()
        return self.autocast()

    def print(self, *args, **kw) -> None:
        if self.is_main:
            print(*args, **kw)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (a collective: call on all ranks)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def shutdown(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Set up the device; under torchrun (RANK/WORLD_SIZE set) also the process group:
    NCCL on CUDA, Gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "RANK" in os.environ:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        dev = pick_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        return Runtime(dev, pick_dtype(dtype, dev, training=True), rank, local_rank, world)
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return Runtime(dev, pick_dtype(dtype, dev, training=True))


def configure_threads(threads: int) -> None:
    """0 keeps torch's default (one thread per physical core)."""
    if threads > 0:
        torch.set_num_threads(threads)


class ThreadGovernor:
    """One torch thread fewer while another program holds a core; the full count back once it leaves.

    Why: torch's threads meet at the end of every operation, so when a competing program takes
    one of the cores, every op waits for the thread that shares its core. On the 2-core VM a
    training step then took ~4x as long with 2 threads and ~2x with 1 (BENCHMARKS.md).

    How: it times steps in groups of `TRIAL`. At the full count, the fastest group's median is
    the quiet pace; a group `SLOWER` times that (and, once, the second group: a load there
    from the start is no slowdown) tries one thread fewer for a group, kept if `GAIN` faster,
    else undone. For a compiled model (`recompiles`) another count is another compile (TorchDynamo
    guards on the count; 20-50 s on the 2-core VMs), so there it tries only a slowdown
    `SLOWER_COMPILED` times the quiet pace, and never the early probe: a shared VM's step times
    alone, with nothing else running, reached 1.5x now and then, and each such trial cost a run a
    compile (twenty-second pass), while a one-core program slowed 2-thread steps 3-7x. While
    reduced, the full count is retried every `RETRY_S` seconds of training (a retry under a
    lasting load costs one slow group, ~5% at the VM's 4x; a load that has left costs at most
    that long at one thread).
    `after_step(t)` takes the training clock (paused during evaluations). The trainer uses it
    only where the count is free to move: nobody chose --threads, one CPU process, and a time
    budget (a float sum's order follows the thread count: a --max-steps run stays reproducible)."""

    TRIAL = 8
    SLOWER = 1.5
    SLOWER_COMPILED = 2.5
    GAIN = 0.9
    RETRY_S = 15.0

    def __init__(self, full: int, set_threads: Callable[[int], None] = torch.set_num_threads):
        self.full = self.threads = full
        self.set_threads = set_threads
        self.quiet: float | None = None  # the full count's best group median (seconds per step)
        self.times: deque[float] = deque(maxlen=self.TRIAL)
        self.last: float | None = None
        self.trial: tuple[int, float] | None = None  # (the count tried from, its median) during a trial
        self.reduced_at = 0.0
        self.probed = False
        self.recompiles = False  # a compiled model: a trial of another count costs a compile
        self.changes: list[str] = []  # one line per kept change, for the log

    @property
    def settled(self) -> bool:
        """False while the step time is not one to plan by: a trial of another count is
        running, or the group so far is `SLOWER` than the quiet pace (a trial may follow)."""
        if self.trial is not None:
            return False
        if self.threads == self.full and self.quiet is not None and len(self.times) >= 2:
            return statistics.median(self.times) <= self._slower * self.quiet
        return True

    def after_step(self, t: float) -> int | None:
        """`t`: the training clock after a step. Returns the thread count when the pace to plan
        by changed (a count tried, undone or kept), else None."""
        if self.last is not None:
            self.times.append(t - self.last)
        self.last = t
        if len(self.times) < self.TRIAL:
            return None
        pace = statistics.median(self.times)
        self.times.clear()
        if self.trial is not None:
            came_from, before = self.trial
            self.trial = None
            if pace > self.GAIN * before:  # not faster: undo
                if came_from == self.full:
                    self.quiet = max(self.quiet, before)  # today's pace: only a further slowdown retries
                return self._set(came_from, t)
            self.changes.append(f"{came_from} -> {self.threads} threads ({before / pace:.1f}x faster at {t:.0f} s)")
            return self.threads  # kept: the pace to plan by is this group's, not the trial's first steps'

        if self.threads == self.full:
            first = self.quiet is None  # the first group pays one-off costs (allocation, warm caches)
            self.quiet = pace if first else min(self.quiet, pace)
            early = not self.recompiles and not self.probed
            if self.full > 1 and not first and (early or pace > self._slower * self.quiet):
                # Probed once early too: a load present from the start never shows as a slowdown.
                self.probed = True
                self.trial = (self.full, pace)
                return self._set(self.full - 1, t)
        elif t - self.reduced_at >= self.RETRY_S:
            self.trial = (self.threads, pace)
            return self._set(self.full, t)
        return None

    @property
    def _slower(self) -> float:
        """How much slower than the quiet pace a group must be to try one thread fewer."""
        return self.SLOWER_COMPILED if self.recompiles else self.SLOWER

    def _set(self, n: int, t: float) -> int:
        self.threads = n
        self.set_threads(n)
        self.last = None  # the next step starts the new group (a switch's own step is not timed)
        if n < self.full:
            self.reduced_at = t  # the one place it is set: a retry waits RETRY_S from the last move down
        return n


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the
    kernel. By default a buffer over 128 KB is mmap-ed fresh and unmapped when freed, so
    every activation of every step page-faults its memory in again: at nanoGPT's CPU shape
    that was ~15% of a training step, and an elementwise op on a [768, 512] tensor took 4x
    as long (0.9 vs 0.23 ms, measured). Up to 32 MB (glibc's cap) come from the heap, and
    up to 1 GB of freed heap stays mapped. A no-op off glibc, or where the user set
    MALLOC_* variables (theirs win). Returns whether it applied."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, or no glibc
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def enable_tf32() -> None:
    """TF32 matmuls on Ampere+ GPUs: ~8x the fp32 rate for the few fp32 ops left under autocast."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
