"""SR-popup search costs (greedyprune.popup), same run, same inputs:

(a) the per-iteration mask update over ResNet-50's prunable conv weights (53 layers, 23.5M
    scores, 90% sparsity from one global magnitude threshold): one `ops.popup_swap` call over
    the flat scores vs the authors' approach, re-implemented in plain PyTorch: per layer, a full
    sort of the scores, nonzero over a float 0/1 mask, two more sorts, Python index lists.
    Both results are checked equal before timing.
(b) one search iteration (masked forward, straight-through backward, SGD on the scores, the
    swap) vs one plain training step (forward, backward, SGD on the weights) of the same model
    on the same batch: the overhead the search adds.

    python benchmarks/bench_popup_search.py                  # prints the tables
    python benchmarks/bench_popup_search.py --write-results  # and writes its section of RESULTS.md
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from greedyprune import ops
from greedyprune.models import build_model
from greedyprune.popup import initialize, popup_step, wrap
from greedyprune.models.demo_nets import small_cnn
from results_section import RESULTS_MD, markers, write_section

SECTION_BEGIN, SECTION_END = markers("bench_popup_search")
SPARSITY = 0.9
SCORE_NOISE = 0.02  # relative perturbation of the simulated search state's scores
SEARCH_PROGRESS = 0.25  # the swap is timed a quarter into the search: rate (1 - 0.25)^4
SEED = 0


def interleaved_ms(providers: dict, repeats: dict, warmup: int = 1) -> dict:
    """{name: (median, min) ms per call}; rounds alternate the providers (repeats[name] calls of
    each per round), so load changes on a shared machine hit all of them alike."""
    for fn in providers.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in providers}
    for _ in range(max(1, min(repeats.values()))):
        for name, fn in providers.items():
            for _ in range(max(1, repeats[name] // min(repeats.values()))):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


# ------------------------------------------------------------- (a) mask update


def authors_swap(layer_scores: list[torch.Tensor], layer_masks: list[torch.Tensor], prune_counts: list[int],
                 rate: float) -> None:
    """The authors' per-layer swap, in place on float 0/1 masks (their layout: one score and one
    mask tensor per layer). Threshold = the prune_count-th smallest score; Phi* = kept entries at
    or below it, Psi* = pruned entries above it; the ceil(|Psi*| * rate) best of each swap."""
    for scores, mask, prune_count in zip(layer_scores, layer_masks, prune_counts):
        values = scores.clone().flatten()
        threshold = values.sort().values[prune_count - 1]
        flat_mask = mask.view(-1)
        pruned = torch.nonzero(flat_mask == 0).flatten()
        kept = torch.nonzero(flat_mask).flatten()
        revive = torch.nonzero(values[pruned] > threshold).flatten()
        drop = torch.nonzero(values[kept] <= threshold).flatten()
        if revive.numel() == 0 or revive.numel() != drop.numel():
            continue
        revive_order = torch.sort(values[pruned][revive], descending=True).indices.tolist()
        drop_order = torch.sort(values[kept][drop]).indices.tolist()
        revive_list, drop_list = revive.tolist(), drop.tolist()
        q = math.ceil(len(revive_list) * rate)
        flat_mask[pruned[[revive_list[i] for i in revive_order[:q]]]] = 1
        flat_mask[kept[[drop_list[i] for i in drop_order[:q]]]] = 0


def mask_update_case(repeats_ops: int, repeats_authors: int) -> dict:
    torch.manual_seed(SEED)
    masked = wrap(build_model("resnet50", num_classes=1000, in_channels=3))
    initialize(masked, SPARSITY)
    # A search state: scores ordered like |w| moved by SCORE_NOISE (relative), so entries near each
    # layer's threshold cross it; stored as their rank in the layer, so no two are equal (on ties
    # at the threshold the authors' code skips the layer, popup_swap breaks them by index).
    gen = torch.Generator().manual_seed(SEED)
    moved = masked.flat_weights().abs() * (1 + SCORE_NOISE * torch.randn(masked.scores.shape, generator=gen))
    offsets = masked.offsets
    bounds = list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    with torch.no_grad():
        for b, e in bounds:
            masked.scores[b:e][moved[b:e].argsort()] = torch.arange(e - b, dtype=torch.float32)
    rate = (1 - SEARCH_PROGRESS) ** 4
    scores, keep = masked.scores.detach(), masked.keep
    layer_scores = [scores[b:e].view(layer.weight.shape) for (b, e), layer in zip(bounds, masked.layers)]
    start_masks = [keep[b:e].float().view(layer.weight.shape) for (b, e), layer in zip(bounds, masked.layers)]
    prune_counts = [(e - b) - int(keep[b:e].sum()) for b, e in bounds]

    expected = ops.popup_swap(scores, keep, rate, offsets)
    masks = [m.clone() for m in start_masks]
    authors_swap(layer_scores, masks, prune_counts, rate)
    assert torch.equal(torch.cat([m.reshape(-1) for m in masks]).bool(), expected.keep), "authors' swap differs"

    # Their swap works in place, so every timed call starts from a copy of the masks.
    timed = interleaved_ms({
        "ours": lambda: ops.popup_swap(scores, keep, rate, offsets),
        "theirs": lambda: authors_swap(layer_scores, [m.clone() for m in start_masks], prune_counts, rate),
        "mask_copy": lambda: [m.clone() for m in start_masks],
    }, {"ours": repeats_ops, "theirs": repeats_authors, "mask_copy": repeats_authors})
    return dict(layers=len(bounds), scores=scores.numel(), kept=int(keep.sum()), rate=rate,
                swaps=int(expected.q.sum()), popup_swap_ms=timed["ours"], authors_ms=timed["theirs"],
                mask_copy_ms=timed["mask_copy"], ratio=timed["theirs"][0] / timed["ours"][0])


# --------------------------------------------------------- (b) search iteration


def iteration_case(name: str, build, batch_shape: tuple[int, ...], num_classes: int, repeats: int) -> dict:
    torch.manual_seed(SEED)
    model = build()
    gen = torch.Generator().manual_seed(SEED)
    inputs = torch.randn(batch_shape, generator=gen)
    targets = torch.randint(0, num_classes, (batch_shape[0],), generator=gen)

    masked = wrap(model)
    initialize(masked, SPARSITY)
    search_optimizer = torch.optim.SGD([masked.scores], lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    masked.train()
    plain_optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def plain_step():
        loss = F.cross_entropy(model(inputs), targets)
        plain_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        plain_optimizer.step()

    def search_step():
        loss = F.cross_entropy(masked(inputs), targets)
        search_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        search_optimizer.step()
        popup_step(masked, 0.5)

    timed = interleaved_ms({"plain": plain_step, "search": search_step, "swap": lambda: popup_step(masked, 0.5)},
                           {"plain": repeats, "search": repeats, "swap": repeats}, warmup=2)
    return dict(model=name, batch=list(batch_shape), masked_weights=masked.scores.numel(),
                distinct_scores=masked.scores.detach().unique().numel(), plain_ms=timed["plain"],
                search_ms=timed["search"], swap_ms=timed["swap"], overhead=timed["search"][0] / timed["plain"][0] - 1)


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return dict(cpu=cpu, cores=len(os.sched_getaffinity(0)), torch=torch.__version__, threads=torch.get_num_threads(),
                backend="cpu" if ops.HAS_C else "reference", load_start=os.getloadavg()[0])


def markdown(host: dict, date: str, command: str, update: dict, iterations: list[dict]) -> str:
    lines = [
        SECTION_BEGIN,
        "### SR-popup search (`benchmarks/bench_popup_search.py`)",
        "",
        f"Written by `{command}` (run started {date}); "
        "rerun it rather than edit this section.",
        f"Machine: {host['cpu']}, {host['cores']} cores available; torch {host['torch']}, {host['threads']} "
        f"thread{'s' if host['threads'] != 1 else ''}; "
        f"greedyprune backend: {host['backend']}; 1-minute load average at start and end: "
        f"{host['load_start']:.2f}, {host['load_end']:.2f}.",
        "",
        f"Mask update per iteration: ResNet-50's {update['layers']} conv layers, {update['scores']:,} float32 scores, "
        f"{update['kept']:,} kept ({SPARSITY:.0%} sparsity, one global magnitude threshold), rate "
        f"{update['rate']:.3f} ((1 - {SEARCH_PROGRESS})^4): {update['swaps']:,} swaps; scores: per layer the ranks "
        f"of |w| moved by {SCORE_NOISE:.0%} noise (no ties, on which the two approaches differ). "
        "The authors' approach: "
        "per layer a full sort, nonzero over a float mask, two sorts, Python index lists (plain-PyTorch "
        "re-implementation, result checked equal); its time includes copying the start masks "
        f"({update['mask_copy_ms'][0]:.1f} ms), since it works in place.",
        "",
        "| mask update | median ms | min ms | x popup_swap time |",
        "|---|---:|---:|---:|",
        f"| greedyprune: one ops.popup_swap call | {update['popup_swap_ms'][0]:.1f} | {update['popup_swap_ms'][1]:.1f} "
        "| 1.00 |",
        f"| authors' per-layer loop | {update['authors_ms'][0]:.1f} | {update['authors_ms'][1]:.1f} "
        f"| {update['ratio']:.1f} |",
        "",
        "Search iteration (masked forward, straight-through backward, SGD on the scores, one popup_swap at "
        "rate 0.5) vs a plain training step (forward, backward, SGD on the weights), same model and batch, "
        "train mode; overhead = search / plain - 1 (medians). Measurements alternate between the compared "
        "providers, round by round. The swap here runs on the search's own state: float32 scores that start at "
        "1 and 0.99 keep many equal values (distinct scores after the timed steps in the table).",
        "",
        "| model | batch | masked weights | distinct scores | plain step ms | search step ms | of which swap ms "
        "| overhead |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in iterations:
        lines.append(f"| {r['model']} | {'x'.join(map(str, r['batch']))} | {r['masked_weights']:,} "
                     f"| {r['distinct_scores']:,} "
                     f"| {r['plain_ms'][0]:.1f} | {r['search_ms'][0]:.1f} | {r['swap_ms'][0]:.1f} "
                     f"| {r['overhead']:+.0%} |")
    lines += ["", SECTION_END]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per measurement (default 9)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--write-results", action="store_true", help="write this script's section of RESULTS.md")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    host = machine()
    update = mask_update_case(repeats_ops=args.repeats * 3, repeats_authors=max(3, args.repeats // 3))
    iterations = [
        iteration_case("demo small CNN (digits)", small_cnn, (64, 1, 8, 8), 10, args.repeats * 3),
        iteration_case("zoo cnn (PQI paper CNN, digits size)",
                       lambda: build_model("cnn", num_classes=10, in_channels=1, image_size=8), (128, 1, 8, 8), 10,
                       args.repeats),
        iteration_case("resnet50 (64x64 inputs)", lambda: build_model("resnet50", num_classes=1000, in_channels=3),
                       (16, 3, 64, 64), 1000, args.repeats),
    ]
    host["load_end"] = os.getloadavg()[0]
    command = "python benchmarks/bench_popup_search.py --write-results" + (f" --threads {args.threads}"
                                                                            if args.threads else "")
    text = markdown(host, date, command, update, iterations)
    print(text)
    if args.write_results:
        write_section("bench_popup_search", text)
        print(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
    main()
