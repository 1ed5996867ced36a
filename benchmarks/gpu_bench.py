"""GPU benchmark: every op with a GPU backend (CUDA kernels, Triton) against a plain
torch baseline and the device-to-device copy bandwidth, measured in the same run.

    python benchmarks/gpu_bench.py [--out FILE]   # default: benchmarks/gpu_results.json

Times are medians of CUDA-event timings after warm-up. A memory-bound op's
"% of copy bandwidth" = (bytes it must read / its time) / (bytes a clone moves,
read + write, / the clone's time); the issue's target is >= 80%.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

import cases
from greedyprune import ops
from greedyprune import triton as gp_triton


def cuda_time_ms(fn, repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def backends_for(op: str, t: torch.Tensor) -> list[str]:
    names = []
    for name in ("cuda", "triton"):
        try:
            ops.backend.resolve_backend(op, name, t)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_results.json"))
    args = parser.parse_args()
    assert torch.cuda.is_available(), "gpu_bench.py needs a CUDA device"
    rows = []

    weights = cases.conv_weights(False)
    w, row_offsets = weights.flat.cuda(), weights.row_offsets.cuda()
    copy_ms = cuda_time_ms(lambda: w.clone())
    copy_gbs = 2 * w.numel() * 4 / copy_ms / 1e6
    rows.append(dict(op="copy", provider="torch clone", ms=copy_ms, gb_per_s=copy_gbs, size=weights.sizes))
    rows.append(dict(op="pq_norms_2p", provider="torch.sum", ms=cuda_time_ms(lambda: torch.sum(w)), size=weights.sizes))
    for name in backends_for("pq_norms", w):
        ms = cuda_time_ms(lambda: ops.pq_norms(w, list(cases.TWO_POWERS), row_offsets, backend=name))
        rows.append(dict(op="pq_norms_2p", provider=name, ms=ms, gb_per_s=w.numel() * 4 / ms / 1e6, size=weights.sizes))
        ms = cuda_time_ms(lambda: ops.pq_norms(w, cases.GRID_POWERS, row_offsets, backend=name), repeats=10)
        rows.append(dict(op="pq_norms_grid", provider=name, ms=ms, size=weights.sizes))

    t = cases.taylor_inputs(False)
    act, grad, a = t.act.cuda(), t.grad.cuda(), t.a.cuda()
    rows.append(dict(op="taylor_scores", provider="torch (act*grad).sum + topk",
                     ms=cuda_time_ms(lambda: cases.torch_taylor_scores(act, grad, a, t.k)), size=t.sizes))
    for name in backends_for("taylor_scores", act):
        ms = cuda_time_ms(lambda: ops.taylor_scores(act, grad, a, t.k, backend=name))
        rows.append(dict(op="taylor_scores", provider=name, ms=ms, gb_per_s=2 * act.numel() * 4 / ms / 1e6, size=t.sizes))

    # Selections over ResNet-50's conv layers (one segment per layer). torch.topk breaks ties its own
    # way, so "matches" tells whether the baseline picked the same entries.
    p = cases.popup_inputs(False)
    scores, keep, layer_offsets = p.scores.cuda(), p.keep.cuda(), p.offsets.cuda()
    baseline = topk_popup_swap(scores, keep, p.rate, p.bounds)
    rows.append(dict(op="popup_swap", provider="torch.topk per layer", size=p.sizes,
                     ms=cuda_time_ms(lambda: topk_popup_swap(scores, keep, p.rate, p.bounds), repeats=10)))
    for name in backends_for("popup_swap", scores):
        matches = bool(torch.equal(ops.popup_swap(scores, keep, p.rate, layer_offsets, backend=name).keep, baseline))
        ms = cuda_time_ms(lambda: ops.popup_swap(scores, keep, p.rate, layer_offsets, backend=name))
        rows.append(dict(op="popup_swap", provider=name, ms=ms, gb_per_s=scores.numel() * 5 / ms / 1e6,
                         matches_topk=matches, size=p.sizes))
    sel = cases.select_inputs(False)
    values = sel.values.cuda()
    baseline = topk_segment_select(values, sel.k, sel.bounds)
    rows.append(dict(op="segment_select", provider="torch.topk per layer", size=sel.sizes,
                     ms=cuda_time_ms(lambda: topk_segment_select(values, sel.k, sel.bounds), repeats=10)))
    for name in backends_for("segment_select", values):
        matches = bool(torch.equal(ops.segment_select(values, sel.k, layer_offsets, backend=name), baseline))
        ms = cuda_time_ms(lambda: ops.segment_select(values, sel.k, layer_offsets, backend=name))
        rows.append(dict(op="segment_select", provider=name, ms=ms, gb_per_s=values.numel() * 4 / ms / 1e6,
                         matches_topk=matches, size=sel.sizes))

    for op in ("greedy_local", "line_search"):
        probe = torch.zeros(1, device="cuda")
        if not backends_for(op, probe):
            rows.append(dict(op=op, provider="(no GPU backend yet)", ms=None))

    print(f"| op | provider | median ms | GB/s | % of copy bandwidth ({copy_gbs:.0f} GB/s) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        gbs = r.get("gb_per_s")
        pct = f"{100 * gbs / copy_gbs:.0f}%" if gbs and r["op"] != "copy" else ""
        ms = f"{r['ms']:.3f}" if r["ms"] is not None else "-"
        print(f"| {r['op']} | {r['provider']} | {ms} | {f'{gbs:.0f}' if gbs else ''} | {pct} |")
    with open(args.out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                       triton=gp_triton.HAS_TRITON, rows=rows), f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
