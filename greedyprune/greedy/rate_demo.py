"""The paper's Figure 1 experiment (seed 000, section 2.3): prune the first hidden layer of a
two-hidden-layer network (100 neurons each) to n neurons with local and global imitation,
against training networks with n neurons in that layer from scratch; the discrepancy from
the original network's output, on a log scale. All three choose (or train) on the training
samples and are scored on held-out samples."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..checks import arg_error, check_int
from ..extras import pyplot
from ..files import save_figure, write_json
from ..models.demo_nets import two_layer_net
from .evaluator import SuffixEvaluator
from .global_imitation import global_imitation
from .gram import contribution_gram
from .local import local_imitation
from .surgery import UnitGraph


def simulated_data(samples: int, inputs: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random target: y = sum_k sin(u_k . x + b_k) / sqrt(K) with K = 8 directions."""
    x = torch.randn(samples, inputs, generator=generator)
    u = torch.randn(8, inputs, generator=generator) / inputs ** 0.5
    b = torch.rand(8, generator=generator) * 6.283
    return x, (torch.sin(x @ u.T + b).sum(1, keepdim=True) / 8 ** 0.5)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 3e-3) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    return model.eval()


def run_rate_demo(out_dir: str | os.PathLike = "greedyprune-out/rate", *, widths=(1, 2, 4, 8, 16, 32, 64),
                  inputs: int = 10, samples: int = 2000, train_steps: int = 3000, eval_samples: int = 500,
                  seed: int = 0, progress: bool = True) -> dict:
    """Run the experiment; writes rate.json and rate.png to out_dir and returns the results."""
    check_int("train_steps", train_steps, minimum=1)
    widths = sorted(set(int(w) for w in widths))
    if not widths or widths[0] < 1 or widths[-1] > 100:
        raise arg_error("widths", f"must lie in [1, 100], got {widths}")
    gen = torch.Generator().manual_seed(seed)
    x, y = simulated_data(samples, inputs, gen)
    x_eval, _ = simulated_data(eval_samples, inputs, torch.Generator().manual_seed(seed + 1))
    torch.manual_seed(seed)
    original = fit(two_layer_net(inputs, 100), x, y, train_steps)
    with torch.no_grad():
        target = original(x_eval)
    graph = UnitGraph(original, x[:2])
    unit = graph.unit("0->2")
    G = contribution_gram(graph, unit, [x])
    with torch.no_grad():
        selector = SuffixEvaluator(graph, unit, x, kind="mse", target=original(x))  # what global imitation sees
    held_out = SuffixEvaluator(graph, unit, x_eval, kind="mse", target=target)
    results = {"widths": widths, "local": [], "global": [], "scratch": []}
    for n in tqdm(widths, desc="rate demo", disable=not progress):
        results["local"].append(float(held_out.evaluate(local_imitation(G, max_neurons=n).gates().float())[0]))
        chosen = global_imitation(selector, max_neurons=n, max_steps=4 * n)
        results["global"].append(float(held_out.evaluate(chosen.gates().float())[0]))
        torch.manual_seed(seed + n)  # trained like the original: same data, labels and budget
        small = fit(two_layer_net(inputs, n), x, y, train_steps)
        with torch.no_grad():
            results["scratch"].append(float(nn.functional.mse_loss(small(x_eval), target)))
    out = Path(out_dir)
    write_json(out / "rate.json", results)
    _plot(results, out / "rate.png")
    return results


def _plot(results: dict, path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label, style in (("local", "local imitation", "o-"), ("global", "global imitation", "s-"),
                              ("scratch", "trained from scratch", "^--")):
        ax.plot(results["widths"], results[key], style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("neurons in the pruned layer (n)")
    ax.set_ylabel("discrepancy from the original (MSE)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
