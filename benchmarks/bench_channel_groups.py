"""Which channel groups greedyprune prunes, per model: the units of each kind, their channels before
and after a uniform width, and the FLOPs reached with the inner units alone and with every group.

The counts depend on the widths only, not on which channels a criterion keeps, so the copies are
cut by surgery (the first ceil(ratio * N) channels of each unit, heads for a heads unit) with no calibration data; at a
FLOP target the uniform width is bisected (budget.width_ratio_for_flops, `--flops-search width`).
Groups left whole are listed with the reason UnitGraph gives.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import replace

import torch

from greedyprune.greedy import PruneConfig
from greedyprune.greedy.budget import uniform_cut, width_ratio_for_flops
from greedyprune.greedy.surgery import UNIT_KINDS, UnitGraph
from greedyprune.harness.measure import count_flops, count_params
from greedyprune.models import build_model
from harness import Benchmark

# (model, image size, classes): the zoo's ImageNet models at 224 and the CIFAR ResNet at 32
MODELS = [("resnet20", 32, 10), ("resnet50", 224, 1000), ("mobilenet_v2", 224, 1000), ("vit_tiny", 224, 1000)]
# A Llama-shaped decoder (Hugging Face transformers, random weights from a config): grouped-query
# attention (8 query heads in 4 key/value groups), a gated MLP, RMSNorms; 128 tokens.
LLAMA = dict(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=256)
LLAMA_TOKENS = 128
WIDTH = 0.5
TARGET_FLOPS = 0.5


def kept_channels(graph: UnitGraph, ratio: float, config: PruneConfig) -> dict:
    """Channels per kind after budget.uniform_cut at `ratio` (units of other kinds stay whole)."""
    after = Counter()
    widths = replace(config, width_ratio=ratio)
    for unit in graph.units:
        after[unit.kind] += widths.max_neurons(unit.channels, unit.kind) if unit.kind in config.groups else unit.channels
    return dict(after)


def zoo_model(name: str, size: int, classes: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    torch.manual_seed(0)
    return build_model(name, num_classes=classes, image_size=size).eval(), torch.randn(2, 3, size, size), f"{size}px"


def llama_model() -> tuple[torch.nn.Module, torch.Tensor, str] | None:
    try:
        import transformers
    except ImportError:
        return None
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).eval()
    return model, torch.randint(0, LLAMA["vocab_size"], (2, LLAMA_TOKENS)), f"{LLAMA_TOKENS} tokens"


def model_row(model: torch.nn.Module, examples: torch.Tensor, size: str) -> dict:
    example = examples[:1]
    graph = UnitGraph(copy.deepcopy(model), examples)
    flops, params = count_flops(model, example), count_params(model)
    row = {"input": size, "params": params, "flops": flops,
           "units": dict(Counter(u.kind for u in graph.units)),
           "channels": dict(Counter({k: sum(u.channels for u in graph.units if u.kind == k) for k in UNIT_KINDS})),
           "left_whole": dict(Counter(s.reason for s in graph.skipped)), "settings": {}}
    for label, groups in (("inner", ("inner",)), ("all", UNIT_KINDS)):
        config = PruneConfig(groups=groups)
        pruned = uniform_cut(model, example, WIDTH, config)
        ratio = width_ratio_for_flops(model, example, TARGET_FLOPS, config=config, iterations=10)
        at_target = uniform_cut(model, example, ratio, config)
        row["settings"][label] = {"width_channels": kept_channels(graph, WIDTH, config),
                                  "width_params": count_params(pruned),
                                  "width_flops": count_flops(pruned, example), "target_ratio": ratio,
                                  "target_flops": count_flops(at_target, example)}
    return row


def measure(quick: bool) -> dict:
    chosen = MODELS[:1] if quick else MODELS
    models = {name: model_row(*zoo_model(name, size, classes)) for name, size, classes in chosen}
    llama = None if quick else llama_model()
    if llama is not None:
        models["llama (HF, 8 x 512)"] = model_row(*llama)
    return {"width": WIDTH, "target_flops": TARGET_FLOPS, "models": models}


def notes(section: dict) -> list[str]:
    result = section["extra"]["result"]
    lines = [f"Uniform width {result['width']} per unit, and the uniform width bisected to "
             f"{result['target_flops']} x the FLOPs, with the inner units alone and with every group "
             f"({' + '.join(UNIT_KINDS)}). Units and channels per kind, in the order {' / '.join(UNIT_KINDS)} "
             "(heads: key/value groups; embed: a transformer's width), summed over the units of each kind. "
             f"The Llama-shaped decoder is Hugging Face's LlamaForCausalLM built from a config ({LLAMA}).", "",
             f"| model | units {' / '.join(UNIT_KINDS)} | channels | after width "
             f"{result['width']}: inner-only / all | params kept inner-only / all | FLOPs kept inner-only / all "
             f"| FLOPs at target {result['target_flops']}: inner-only / all (width) | left whole |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, row in result["models"].items():
        inner, every = row["settings"]["inner"], row["settings"]["all"]

        def kinds(counts: dict) -> str:
            return " / ".join(str(counts.get(k, 0)) for k in UNIT_KINDS)

        left = "; ".join(f"{n} {reason}" for reason, n in row["left_whole"].items())
        lines.append(
            f"| {name} ({row['input']}, {row['params'] / 1e6:.2f}M params, {row['flops'] / 1e9:.2f} GFLOPs) "
            f"| {kinds(row['units'])} | {kinds(row['channels'])} "
            f"| {kinds(inner['width_channels'])} ; {kinds(every['width_channels'])} "
            f"| {inner['width_params'] / row['params']:.3f} / {every['width_params'] / row['params']:.3f} "
            f"| {inner['width_flops'] / row['flops']:.3f} / {every['width_flops'] / row['flops']:.3f} "
            f"| {inner['target_flops'] / row['flops']:.3f} ({inner['target_ratio']:.3f}) / "
            f"{every['target_flops'] / row['flops']:.3f} ({every['target_ratio']:.3f}) | {left} |")
    return lines


BENCHMARK = Benchmark(
    name="channel_groups",
    title="Channel groups pruned per model (inner channels, residual streams, heads, embedding width)",
    about="What `--groups` covers on the zoo's models: units and channels per kind of group, the parameters and "
          "FLOPs kept at a uniform width, and the FLOPs a uniform width reaches when asked for half, with the "
          "inner units alone and with every group. `python benchmarks/run.py channel_groups`.",
    extra=measure,
    notes=notes,
)
