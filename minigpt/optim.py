"""Muon with its Newton-Schulz iterations batched over same-shaped matrices.

torch.optim.Muon orthogonalises each matrix's update on its own: five quintic Newton-Schulz
iterations, three bf16 matrix products each, per matrix. The default cpu preset has 15
block matrices in 4 shapes (per layer: c_attn [576, 192], attn.c_proj [192, 192], the
SwiGLU's two [512, 192] and its [192, 512]), so one step makes 225 small products, each
too small to keep two cores busy, each with its own dispatch. `BatchedMuon` stacks the
matrices of one shape and runs the same iteration with batched products: 60 calls instead
of 225, on 3-6x larger operands. A tall stack is iterated as it lies, its Gram matrix on
the right (X^T X), where torch turns each tall matrix wide and back (two transposed copies
of 9 of the preset's 15 matrices a step).

It is torch.optim.Muon in every other respect -- a subclass with the same hyperparameters,
param groups and per-parameter state ("momentum_buffer"), so a checkpoint written by either
loads into the other and an interrupted run resumes exactly. Each matrix's update is the
one torch.optim.Muon computes, to the rounding of bf16 products in another blocking (the
tests compare them).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn as nn

from .config import TrainConfig

__all__ = ["BatchedMuon", "newton_schulz", "make_optimizer", "muon_params", "make_optimizers"]


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """The orthogonalisation of torch.optim.Muon (Jordan et al.'s quintic iteration), for a
    stack of matrices at once: g [n, rows, cols], each normalised by its own Frobenius norm,
    then `steps` times  X <- a X + (b A + c A A) X,  A = X X^T  (for a wide stack; a tall
    one, rows > cols, takes the same step on its transpose: X <- X (a I + b A + c A A),
    A = X^T X, which is what torch computes after turning it wide), in bf16. Returns bf16
    [n, rows, cols]: each approximately U V^T of its matrix's SVD.

    (`a X + B X` stays one baddbmm, a X added inside the product's fp32 accumulation, as
    torch's addmm does: folded into the product as `(a I + B) X`, it saves the copy of X
    into the output but rounds a + B's diagonal to bf16, which doubled the iteration's
    error against a float64 one, measured.)"""
    a, b, c = coefficients
    tall = g.shape[-2] > g.shape[-1]
    x = g.bfloat16()
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)  # torch's: ortho.div_(ortho.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x.mT @ x if tall else x @ x.mT  # [n, k, k], k = min(rows, cols)
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A A
        # a X + (b A + c A A) X, or for a tall stack a X + X (b A + c A A)
        x = torch.baddbmm(x, x, update, beta=a) if tall else torch.baddbmm(x, update, x, beta=a)
    return x


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon whose Newton-Schulz runs once per distinct matrix shape (see the
    module docstring). Same arguments, same state, same update to bf16 rounding."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            lr = lr.item() if isinstance(lr, torch.Tensor) else lr
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse or torch.is_complex(p) for p in params):
                raise RuntimeError("Muon supports dense real matrices only")
            grads = [p.grad for p in params]
            bufs = [self._momentum_buffer(p) for p in params]
            # momentum and Nesterov, torch's order of operations, each one call over the list
            # rather than one per matrix (the plan's compiled step 1.03x: BENCHMARKS.md, fourteenth pass)
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
            if wd:  # (x 1.0 is exact: skipping it changes nothing but a pass over p)
                torch._foreach_mul_(params, 1 - lr * wd)
            by_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for p, u in zip(params, updates):
                by_shape[(*p.shape, p.device)].append((p, u))
            # one batched orthogonalisation per shape
            for (rows, cols, device), items in by_shape.items():
                # [n, rows, cols], cast to bf16 as it is copied in (newton_schulz's dtype)
                stack = torch.empty(len(items), rows, cols, dtype=torch.bfloat16, device=device)
                for s, (_, u) in zip(stack, items):
                    s.copy_(u)
                ortho = newton_schulz(stack, group["ns_coefficients"], group["ns_steps"], group["eps"])
                same = [p for p, _ in items]  # one shape, so one learning-rate adjustment
                step = -_adjusted_lr(lr, group["adjust_lr_fn"], same[0].shape)
                torch._foreach_add_(same, list(ortho.unbind(0)), alpha=step)
        return loss

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        return state["momentum_buffer"]


def _adjusted_lr(lr: float, rule: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-shape learning rate: "original" (Jordan: sqrt(max(1, rows/cols)))
    or "match_rms_adamw" (Moonshot: 0.2 sqrt(max(rows, cols)))."""
    A, B = shape[:2]
    if rule is None or rule == "original":
        return lr * math.sqrt(max(1, A / B))
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(A, B))
    return lr


# ---- the trainer's optimizers (moved from trainer.py: trainer imports these three) ----------


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices (embeddings, linear weights) only: decaying biases
    and LayerNorm gains toward zero only hurts (GPT-2/nanoGPT practice)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one kernel for the whole update, on CUDA and (since torch 2.4) on the CPU,
    # where it took the optimizer from ~2.6 to ~1.0 ms a step at nanoGPT's CPU shape.
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), fused=True)


def muon_params(model: nn.Module) -> list[nn.Parameter]:
    """The matrices Muon updates: every 2-D weight inside the blocks (attention and MLP
    projections). Embeddings, the output head and the gains/biases stay with AdamW: Muon
    orthogonalises a matrix's update, which suits maps between hidden spaces, not lookup
    tables or the vocabulary head (Jordan et al., the Muon README)."""
    return [p for n, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and ".h." in f".{n}"]


def make_optimizers(
    model: nn.Module, cfg: TrainConfig, device: torch.device, *, batched_muon: bool = True
) -> list[torch.optim.Optimizer]:
    """AdamW for everything (--optimizer adamw), or Muon for the blocks' matrices plus AdamW
    for the rest (--optimizer muon). Every param group carries `lr_scale`, its rate relative
    to --lr, so one schedule drives both: Muon's group runs at --muon-lr x the schedule.
    `batched_muon` False: torch.optim.Muon itself (the benchmarks compare the two; the
    state_dicts are interchangeable)."""
    o = cfg.optim
    if o.optimizer != "muon" or not muon_params(model):  # no block matrices (an RNN): AdamW for all
        opt = make_optimizer(model, cfg, device)
        for g in opt.param_groups:
            g["lr_scale"] = 1.0
        return [opt]
    hidden = muon_params(model)
    taken = {id(p) for p in hidden}

    class _Rest(nn.Module):  # the parameters AdamW keeps, for make_optimizer's decay rule
        def __init__(self, params):
            super().__init__()
            self.ps = nn.ParameterList(params)

    rest = _Rest([p for p in model.parameters() if p.requires_grad and id(p) not in taken])
    adamw = make_optimizer(rest, cfg, device)
    for g in adamw.param_groups:
        g["lr_scale"] = 1.0
    muon_cls = BatchedMuon if batched_muon else torch.optim.Muon
    muon = muon_cls(hidden, lr=o.muon_lr, weight_decay=o.muon_weight_decay, momentum=0.95, nesterov=True)
    for g in muon.param_groups:
        g["lr_scale"] = o.muon_lr / o.lr
    return [muon, adamw]
