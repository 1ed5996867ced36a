"""The "popup_search" benchmark: SR-popup search costs (greedyprune.popup), same run, same inputs.

(a) popup_mask_update: the per-iteration mask update over ResNet-50's prunable conv weights
    (53 layers, 23.5M scores, 90% sparsity from one global magnitude threshold): one
    `ops.popup_swap` call over the flat scores vs the authors' approach, re-implemented in
    plain PyTorch: per layer, a full sort of the scores, nonzero over a float 0/1 mask, two
    more sorts, Python index lists. Both results are checked equal.
(b) popup_iteration_*: one search iteration (masked forward, straight-through backward, SGD
    on the scores, the swap) vs one plain training step (forward, backward, SGD on the
    weights) of the same model on the same batch: the overhead the search adds.

Quick sizes: ResNet-20 for (a), ResNet-50 on 2 images of 32x32 in (b).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from greedyprune import ops
from greedyprune.models import build_model
from greedyprune.models.demo_nets import small_cnn
from greedyprune.popup import initialize, popup_step, wrap
from harness import Benchmark, Case, quiet_medians

SPARSITY = 0.9
SCORE_NOISE = 0.02  # relative perturbation of the simulated search state's scores
SEARCH_PROGRESS = 0.25  # the swap is timed a quarter into the search: rate (1 - 0.25)^4
ITERATION_RATE = 0.5
SEED = 0


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


@dataclass(frozen=True)
class MaskUpdateInputs:
    scores: torch.Tensor
    keep: torch.Tensor
    rate: float
    offsets: torch.Tensor
    layer_scores: list[torch.Tensor]
    start_masks: list[torch.Tensor]
    prune_counts: list[int]
    sizes: str


def mask_update_inputs(quick: bool) -> MaskUpdateInputs:
    torch.manual_seed(SEED)
    name = "resnet20" if quick else "resnet50"
    # the conv layers only, ranked per layer: the scope the authors' loop works in
    masked = wrap(build_model(name, num_classes=10 if quick else 1000, in_channels=3), exclude_classifier=True)
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
    shapes = [layer.weight.shape for layer in masked.layers]
    swaps = int(ops.popup_swap(scores, keep, rate, offsets).q.sum())
    sizes = (f"{name}'s {len(bounds)} conv layers, {scores.numel():,} float32 scores, {int(keep.sum()):,} kept "
             f"({SPARSITY:.0%} sparsity, one global magnitude threshold), rate {rate:.3f} ((1 - {SEARCH_PROGRESS})^4): "
             f"{swaps:,} swaps; scores: per layer the ranks of |w| moved by {SCORE_NOISE:.0%} noise (no ties, on "
             "which the two approaches differ)")
    return MaskUpdateInputs(scores, keep, rate, offsets,
                            [scores[b:e].view(shape) for (b, e), shape in zip(bounds, shapes)],
                            [keep[b:e].float().view(shape) for (b, e), shape in zip(bounds, shapes)],
                            [(e - b) - int(keep[b:e].sum()) for b, e in bounds], sizes)


def authors_update(x: MaskUpdateInputs) -> list[torch.Tensor]:
    """Their swap works in place, so every call starts from a copy of the masks (timed with it)."""
    masks = [m.clone() for m in x.start_masks]
    authors_swap(x.layer_scores, masks, x.prune_counts, x.rate)
    return masks


def _check_mask_update(x: MaskUpdateInputs, out: dict) -> None:
    theirs = torch.cat([m.reshape(-1) for m in out["authors_loop"]]).bool()
    assert torch.equal(theirs, out["greedyprune_popup_swap"].keep), "authors' swap differs"


MASK_UPDATE = Case(
    name="popup_mask_update",
    title="SR-popup mask update per iteration: one popup_swap call vs the authors' per-layer loop",
    subject="greedyprune_popup_swap",
    make_inputs=mask_update_inputs,
    providers={
        "greedyprune_popup_swap": lambda x: ops.popup_swap(x.scores, x.keep, x.rate, x.offsets),
        "authors_loop": authors_update,
        "mask_copy": lambda x: [m.clone() for m in x.start_masks],  # the part of authors_loop that is copying
    },
    check=_check_mask_update,
    calls={"greedyprune_popup_swap": 27, "authors_loop": 3, "mask_copy": 3},
)


# --------------------------------------------------------- (b) search iteration


@dataclass(frozen=True)
class IterationInputs:
    plain_step: Callable[[], None]
    search_step: Callable[[], None]
    swap: Callable[[], None]
    scores: torch.Tensor
    sizes: str


def iteration_inputs(model_name: str, build, batch_shape: tuple[int, ...], num_classes: int) -> IterationInputs:
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
        popup_step(masked, ITERATION_RATE)

    sizes = f"{model_name}, batch {'x'.join(map(str, batch_shape))}, {masked.scores.numel():,} masked weights"
    return IterationInputs(plain_step, search_step, lambda: popup_step(masked, ITERATION_RATE), masked.scores, sizes)


def iteration_case(name: str, model_name: str, build, batch_shapes: dict[bool, tuple[int, ...]], num_classes: int,
                   calls: int) -> Case:
    return Case(
        name=f"popup_iteration_{name}",
        title=f"SR-popup search iteration vs a plain training step: {model_name}",
        subject="plain_step",
        make_inputs=lambda quick: iteration_inputs(model_name, build, batch_shapes[quick], num_classes),
        providers={"plain_step": lambda x: x.plain_step(), "search_step": lambda x: x.search_step(),
                   "swap": lambda x: x.swap()},
        check=lambda x, out: None,  # the steps share no output; the op's results are tested in tests/
        calls={"plain_step": calls, "search_step": calls, "swap": calls},
        warmup=1,
        # The search's own float32 scores start at 1 and 0.99 and keep many equal values.
        final_facts=lambda x: {"distinct_scores": x.scores.detach().unique().numel()},
    )


ITERATIONS = [
    iteration_case("small_cnn", "demo small CNN (digits)", small_cnn, {False: (64, 1, 8, 8), True: (64, 1, 8, 8)},
                   10, 27),
    iteration_case("zoo_cnn", "zoo cnn (PQI paper CNN, digits size)",
                   lambda: build_model("cnn", num_classes=10, in_channels=1, image_size=8),
                   {False: (128, 1, 8, 8), True: (32, 1, 8, 8)}, 10, 9),
    iteration_case("resnet50", "resnet50", lambda: build_model("resnet50", num_classes=1000, in_channels=3),
                   {False: (16, 3, 64, 64), True: (2, 3, 32, 32)}, 1000, 9),
]


def notes(section: dict) -> list[str]:
    rows = []
    for case in ITERATIONS:
        record = section["cases"].get(case.name)
        if record is None:
            continue
        ms = quiet_medians(record)
        rows.append(f"| {record['sizes']} | {record['facts']['distinct_scores']:,} | {ms['plain_step']:.1f} "
                    f"| {ms['search_step']:.1f} | {ms['swap']:.1f} | {ms['search_step'] / ms['plain_step'] - 1:+.0%} |")
    if not rows:
        return []
    return ["Search overhead = search step / plain step - 1 (quiet medians); distinct scores after the timed steps "
            "(on which the swap's ties depend):", "",
            "| model, batch, masked weights | distinct scores | plain step ms | search step ms | of which swap ms "
            "| overhead |", "|---|---:|---:|---:|---:|---:|", *rows]


BENCHMARK = Benchmark(
    name="popup_search",
    title="SR-popup search: mask update and iteration overhead",
    about="The mask update: one `ops.popup_swap` call over the flat scores of every layer vs the authors' approach "
          "(per layer a full sort, nonzero over a float mask, two sorts, Python index lists; plain-PyTorch "
          "re-implementation, result checked equal), whose time includes copying the start masks (`mask_copy`) "
          "since it works in place. The iteration: masked forward, straight-through backward, SGD on the scores and "
          f"one popup_swap at rate {ITERATION_RATE} vs forward, backward and SGD on the weights, same model and "
          "batch, train mode. Calls alternate between the providers of a case, round by round.",
    cases=[MASK_UPDATE, *ITERATIONS],
    notes=notes,
)
