"""The "gpu" benchmark: every op with a GPU backend (CUDA kernels, Triton) against a plain torch
baseline, and the device-to-device copy bandwidth, measured in the same run on the inputs of
the "ops" benchmark (cases.py) moved to the GPU. Needs a CUDA device; benchmarks/gpu_check.sh
runs it (`python benchmarks/run.py gpu`).

A memory-bound op's "% of copy bandwidth" = (bytes it must read / its time) / (bytes a clone
moves, read + write, / the clone's time); the issue's target is >= 80%.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

import cases
from greedyprune import ops
from greedyprune import triton as gp_triton
from harness import Benchmark, Case

GPU_BACKENDS = ("cuda", "triton")
UNTIMED_OPS = ("greedy_local", "line_search")  # no GPU case here yet
FLOAT32_BYTES = 4


def backends_for(op: str) -> list[str]:
    probe = torch.empty(0, device="cuda")
    names = []
    for name in GPU_BACKENDS:
        try:
            ops.backend.resolve_backend(op, name, probe)
            names.append(name)
        except RuntimeError:
            pass
    return names


def topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k largest values by torch.topk."""
    mask = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    mask[torch.topk(values, k).indices] = True
    return mask


def topk_popup_swap(scores, keep, rate, bounds):
    """SR-popup swap per layer in plain PyTorch on the GPU: torch.topk for T, then for the q lowest
    of Phi* and the q highest of Psi* (a host round trip per layer)."""
    return cases.torch_popup_swap(scores, keep, rate, bounds, top_mask=topk_mask)


def topk_segment_select(values, k, bounds):
    """Per-layer top-k mask with torch.topk, a Python loop over layers."""
    out = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    for (b, e), k_layer in zip(bounds, k):
        out[b:e] = topk_mask(values[b:e], k_layer)
    return out


@dataclass(frozen=True)
class OnGPU:
    """A case's CPU inputs (cases.py) with their tensors on the GPU."""

    x: object
    sizes: str


def on_gpu(make_inputs):
    @functools.cache
    def make(quick: bool) -> OnGPU:
        x = make_inputs(quick)
        moved = {name: (value.cuda() if isinstance(value, torch.Tensor) else value)
                 for name, value in vars(x).items()}
        return OnGPU(type(x)(**moved), x.sizes)

    return make


def _agree(expected, got, name: str) -> None:
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def _check_backends(field: str):
    """Every GPU backend gives the first one's result (`field` of the op's output)."""

    def check(x, out: dict) -> None:
        first, *others = [name for name in out if name in GPU_BACKENDS]
        for name in others:
            _agree(getattr(out[first], field), getattr(out[name], field), name)

    return check


def _matches_topk(field: str | None):
    """torch.topk breaks ties its own way: whether each backend picked the baseline's entries (a fact)."""

    def check(x, out: dict) -> dict:
        picked = {name: (getattr(o, field) if field else o) for name, o in out.items() if name in GPU_BACKENDS}
        return {"matches_topk": {name: bool(torch.equal(mask, out["torch_topk"])) for name, mask in picked.items()}}

    return check


def op_case(op: str, name: str, title: str, make_inputs, baselines: dict, run_op, check, bytes_read=None) -> list[Case]:
    """The case of `op` with a provider per GPU backend of this build (none: no case).
    run_op(inputs, backend); bytes_read(inputs): what a memory-bound op must read (for GB/s)."""
    backends = {backend: functools.partial(run_op, backend=backend) for backend in backends_for(op)}
    if not backends:
        return []

    def check_and_count(g, out: dict) -> dict:
        facts = check(g, out) or {}
        if bytes_read:
            facts["bytes"] = {backend: bytes_read(g) for backend in backends}
        return facts

    return [Case(name=name, title=title, subject=next(iter(backends)), make_inputs=make_inputs,
                 providers={**baselines, **backends}, check=check_and_count)]


def gpu_cases() -> list[Case]:
    weights = on_gpu(cases.conv_weights)
    taylor = on_gpu(cases.taylor_inputs)
    popup = on_gpu(cases.popup_inputs)
    select = on_gpu(cases.select_inputs)
    two, grid = list(cases.TWO_POWERS), cases.GRID_POWERS
    copy = Case(name="gpu_copy", title="Device-to-device copy (the bandwidth yardstick)", subject="torch_clone",
                make_inputs=weights, providers={"torch_clone": lambda g: g.x.flat.clone()},
                check=lambda g, out: {"bytes": {"torch_clone": 2 * g.x.flat.numel() * FLOAT32_BYTES}})
    return [
        copy,
        *op_case("pq_norms", "gpu_pq_norms_2p", "pq_norms, p = 0.5 and q = 1, per output row", weights,
                 {"torch_sum": lambda g: torch.sum(g.x.flat)},
                 lambda g, backend: ops.pq_norms(g.x.flat, two, g.x.row_offsets, backend=backend),
                 _check_backends("log_sums"), lambda g: g.x.flat.numel() * FLOAT32_BYTES),
        *op_case("pq_norms", "gpu_pq_norms_grid", "pq_norms, the paper's 20 powers, per output row", weights, {},
                 lambda g, backend: ops.pq_norms(g.x.flat, grid, g.x.row_offsets, backend=backend),
                 _check_backends("log_sums")),
        *op_case("taylor_scores", "gpu_taylor_scores", "taylor_scores", taylor,
                 {"torch": lambda g: cases.torch_taylor_scores(g.x.act, g.x.grad, g.x.a, g.x.k)},
                 lambda g, backend: ops.taylor_scores(g.x.act, g.x.grad, g.x.a, g.x.k, backend=backend),
                 _check_backends("r"), lambda g: 2 * g.x.act.numel() * FLOAT32_BYTES),
        # scores read, keep read (1 byte each)
        *op_case("popup_swap", "gpu_popup_swap", "popup_swap over ResNet-50's conv layers", popup,
                 {"torch_topk": lambda g: topk_popup_swap(g.x.scores, g.x.keep, g.x.rate, g.x.bounds)},
                 lambda g, backend: ops.popup_swap(g.x.scores, g.x.keep, g.x.rate, g.x.offsets, backend=backend),
                 _matches_topk("keep"), lambda g: g.x.scores.numel() * (FLOAT32_BYTES + 1)),
        *op_case("segment_select", "gpu_segment_select", "segment_select, top-10% per ResNet-50 conv layer", select,
                 {"torch_topk": lambda g: topk_segment_select(g.x.values, g.x.k, g.x.bounds)},
                 lambda g, backend: ops.segment_select(g.x.values, g.x.k, g.x.offsets, backend=backend),
                 _matches_topk(None), lambda g: g.x.values.numel() * FLOAT32_BYTES),
    ]


def device_facts(quick: bool) -> dict:
    return {"device": torch.cuda.get_device_name(), "triton": gp_triton.HAS_TRITON,
            "untimed_ops": {op: backends_for(op) for op in UNTIMED_OPS}}


def notes(section: dict) -> list[str]:
    records = section["cases"]
    if "gpu_copy" not in records:
        return []
    copy = records["gpu_copy"]
    copy_gbs = copy["facts"]["bytes"]["torch_clone"] / copy["providers"]["torch_clone"]["quiet"]["median_ms"] / 1e6
    rows = []
    for name, record in records.items():
        for provider, n in record["facts"].get("bytes", {}).items():
            gbs = n / record["providers"][provider]["quiet"]["median_ms"] / 1e6
            matches = record["facts"].get("matches_topk", {}).get(provider)
            rows.append(f"| {name} | {provider} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% "
                        f"| {'' if matches is None else ('yes' if matches else 'no')} |")
    lines = [f"Bandwidth (bytes the op must read / its median time; copy: read + write = {copy_gbs:.0f} GB/s):", "",
             "| case | provider | GB/s | % of copy bandwidth | same entries as torch.topk |", "|---|---|---:|---:|---|",
             *rows]
    if "extra" in section:
        untimed = section["extra"]["result"]["untimed_ops"]
        lines += ["", "Not timed on the GPU here: " + ", ".join(
            f"{op} ({', '.join(backends) if backends else 'no GPU backend'})" for op, backends in untimed.items())]
    return lines


BENCHMARK = Benchmark(
    name="gpu",
    title="GPU kernels vs torch and the copy bandwidth",
    about="Each op's CUDA and Triton backends (those this build has) against plain torch on the GPU, on the "
          "inputs of the CPU cases; times are blocked_autorange medians (synchronised). The backends are checked "
          "against each other; torch.topk baselines break ties their own way, so whether they picked the same "
          "entries is reported, not asserted.",
    cases=gpu_cases() if torch.cuda.is_available() else [],
    extra=device_facts,
    notes=notes,
    unavailable=None if torch.cuda.is_available() else "needs a CUDA device",
)
