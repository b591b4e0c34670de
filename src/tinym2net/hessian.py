"""Per-layer Hessian traces (Hutchinson) and the HAWQ-V3 sensitivities the bit-allocation ILP minimizes.

Omega_i^b = Tr(H_ii) / n_i * ||Q_b(W_i) - W_i||^2, with H_ii the block of the loss Hessian for the
weights W_i of layer i (n_i entries) and Q_b the per-channel fake quantization of `quant.py`.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .errors import DataError, ParamsError
from .quant import fake_quant_weight, quantizable_layers

log = logging.getLogger(__name__)


def _rademacher(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random +-1 entries of `like`'s shape, drawn from `gen` on the CPU."""
    return (torch.randint(0, 2, like.shape, generator=gen) * 2 - 1).to(like.device, like.dtype)


@dataclass
class Traces:
    """Hutchinson estimates: per tensor the mean of v . H v and its standard error, and how the run ended."""
    mean: dict[str, float]
    stderr: dict[str, float]
    iterations: int
    converged: bool

    def __getitem__(self, name: str) -> float:
        return self.mean[name]

    def relative_error(self, name: str) -> float:
        return self.stderr[name] / max(abs(self.mean[name]), 1e-300)


def hutchinson_traces(model: nn.Module, loss_fn: Callable, batches: Iterable, params: dict[str, torch.Tensor], *,
                      tol: float = 0.05, min_iter: int = 2, max_iter: int = 200, seed: int = 0) -> Traces:
    """Estimate Tr(H_ii) for each named tensor: mean of v_i . H_ii v_i over Rademacher v_i, cycling `batches`.

    One iteration takes the next (inputs, targets) batch, builds the gradient graph once and probes
    each block with its own vector v_i (one double backprop per tensor). Probing the whole Hessian
    with one v and splitting v . Hv per layer has the same mean but adds the cross-layer blocks
    H_ij to the variance, which for this network is 30-8000x the trace (see tests/test_hessian.py).
    Stops once every tensor's relative standard error (the spread of its samples over the probes and
    batches, divided by sqrt(iterations)) is at most `tol`, after `min_iter` iterations; else at
    `max_iter`, unconverged.
    """
    if not params:
        raise ParamsError("hutchinson_traces: no parameters to estimate traces for")
    if max_iter < 1 or tol < 0 or min_iter < 2:
        raise ParamsError(f"hutchinson_traces: need max_iter >= 1, min_iter >= 2 and tol >= 0 "
                          f"(got {max_iter!r}, {min_iter!r}, {tol!r})")
    names, tensors = list(params), list(params.values())
    for name, t in params.items():
        if not t.requires_grad:
            raise ParamsError(f"hutchinson_traces: {name} does not require grad")
    gen = torch.Generator().manual_seed(seed)
    source = itertools.cycle(batches)
    means, m2 = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)   # Welford's running mean and sum of squares
    converged = False
    was_training = model.training
    model.eval()  # no dropout, BN on running statistics: the same function at every iteration
    try:
        for it in range(1, max_iter + 1):
            try:
                inputs, targets = next(source)
            except StopIteration:
                raise DataError("hutchinson_traces: no batches to estimate the Hessian from") from None
            loss = loss_fn(model(inputs), targets)
            grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
            unused = [n for n, g in zip(names, grads) if g is None]
            if unused:
                raise ParamsError(f"hutchinson_traces: {unused[0]} does not take part in the loss")
            for name, g, t in zip(names, grads, tensors):
                v = _rademacher(t, gen)
                (hv,) = torch.autograd.grad((g * v).sum(), t, retain_graph=True, allow_unused=True)  # H_ii v_i
                sample = 0.0 if hv is None else (v * hv).sum().item()  # v_i . H_ii v_i
                delta = sample - means[name]
                means[name] += delta / it
                m2[name] += delta * (sample - means[name])
            if it >= min_iter and all(_stderr(m2[n], it) <= tol * abs(means[n]) for n in names):
                converged = True
                break
        log.info("Hutchinson: %d iterations, %s (tol %g on the relative standard error, max_iter %d)", it,
                 "converged" if converged else "NOT converged", tol, max_iter)
    finally:
        model.train(was_training)
    return Traces(means, {n: _stderr(m2[n], it) for n in names}, it, converged)


def _stderr(m2: float, n: int) -> float:
    return (m2 / (n - 1) / n) ** 0.5 if n > 1 else float("inf")


def _first_sample(inputs):
    """Batch size 1 copy of a model input (a tensor or a dict of tensors)."""
    if isinstance(inputs, dict):
        return {k: v[:1] for k, v in inputs.items()}
    return inputs[:1]


def layer_macs(model: nn.Module, example_inputs) -> dict[str, int]:
    """Multiply-accumulates of each Conv2d/Linear for one sample, measured with forward hooks."""
    layers = quantizable_layers(model)
    macs: dict[str, int] = {}

    def hook(name):
        def record(module, args, out):  # out: (1, C_out, H, W) or (1, out_features)
            # conv: out elements * (C_in/groups) * kh * kw; linear: out_features * in_features
            macs[name] = macs.get(name, 0) + out.numel() * module.weight[0].numel()
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_first_sample(example_inputs))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in macs]
    if missing:
        raise ParamsError(f"layer_macs: {missing[0]} is not used by the model's forward pass")
    return macs


def sensitivity(model: nn.Module, loss_fn: Callable, batches: Iterable, *, bit_choices=(4, 8),
                tol: float = 0.05, min_iter: int = 2, max_iter: int = 200, seed: int = 0) -> tuple[list[dict], Traces]:
    """Per quantizable layer: name, weight count, MACs, Hessian trace (and its standard error) and Omega at
    each bit width; and the Hutchinson run itself."""
    batches = list(batches)
    if not batches:
        raise DataError("sensitivity: no batches to estimate the Hessian from")
    layers = quantizable_layers(model)
    traces = hutchinson_traces(model, loss_fn, batches, {n: m.weight for n, m in layers.items()},
                               tol=tol, min_iter=min_iter, max_iter=max_iter, seed=seed)
    macs = layer_macs(model, batches[0][0])
    out = []
    for name, layer in layers.items():
        w = layer.weight.detach()
        if traces[name] < 0:
            log.warning("%s: negative Hessian trace %.3g (not at a minimum?); Omega is negative", name, traces[name])
        omega = {str(b): traces[name] / w.numel() * (fake_quant_weight(w, b) - w).pow(2).sum().item()
                 for b in bit_choices}
        out.append({"name": name, "params": w.numel(), "macs": macs[name], "trace": traces[name],
                    "trace_stderr": traces.stderr[name], "omega": omega})
    return out, traces


def ties(model: nn.Module) -> list[list[str]]:
    """Layer pairs that must share a bit width: each depthwise conv and the pointwise conv right after it."""
    names = {id(m): n for n, m in model.named_modules()}
    pairs = []
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq.children())
        for dw, pw in zip(children, children[1:]):
            depthwise = isinstance(dw, nn.Conv2d) and dw.groups == dw.in_channels == dw.out_channels
            pointwise = isinstance(pw, nn.Conv2d) and pw.kernel_size == (1, 1) and pw.groups == 1
            if depthwise and pointwise:
                pairs.append([names[id(dw)], names[id(pw)]])
    return pairs
