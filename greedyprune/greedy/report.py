"""The report of a pruning run: the before/after table and the per-unit widths as text, and
report.png (widths and the time of each unit)."""
from __future__ import annotations

from collections import Counter

from ..extras import pyplot
from ..files import save_figure
from ..harness.training import RECIPE_SETTINGS


def format_report(report: dict) -> str:
    """The before/after table and the per-unit widths as text."""
    rows = [("", "params", "MFLOPs", "MMACs", "accuracy", "ms (batch 1)", "ms (batch 64)")]
    for key in ("before", "after_prune", "after_finetune"):
        if key in report:
            s = report[key]
            rows.append((key.replace("_", " "), f"{s['params']:,}", f"{s['flops'] / 1e6:.2f}",
                         f"{s['flops'] / 2e6:.2f}", f"{s['accuracy']:.4f}",
                         f"{s['latency_ms_batch1']:.3f}", f"{s['latency_ms_batch64']:.3f}"))
    lines = ["  ".join(f"{c:>14}" for c in row) for row in rows]
    s = report["before"]
    lines.append(f"(FLOPs: torch.utils.flop_counter's, 2 per multiply-accumulate; MACs as papers and Torch-Pruning "
                 f"quote them. Latency: median of repeated forwards on {s.get('latency_device', 'CPU')}, "
                 f"{s['latency_threads']} threads, load average {s['latency_load'][0]:.1f}-{s['latency_load'][1]:.1f})")
    recipe = report.get("after_finetune", {}).get("recipe")
    if recipe:
        settings = ", ".join(f"{k.replace('_', ' ')} {recipe['settings'][k]:g}" for k in RECIPE_SETTINGS
                             if k in recipe["settings"])
        given = f"; given: {', '.join(recipe['given'])}" if recipe["given"] else ""
        lines.append(f"(fine-tuning recipe: {recipe['name']}, {settings}, cosine decay{given})")
    lines.append("")
    lines.append("discrepancy: the network's (" + report["config"]["discrepancy"] + ") on the calibration images, with "
                 "the path's gates (gated) and as exported; refit: the consumer's relative output error "
                 "(reconstruct), plain removal's in brackets")
    lines.append(f"{'unit':>28}  {'width':>11}  {'asked':>5}  {'method':>7}  {'gated':>9}  {'exported':>9}  "
                 f"{'refit':>15}  {'gram s':>7}  {'select s':>8}  {'eval s':>7}  {'export s':>8}  {'total s':>7}  "
                 "stopped by")
    for u in report["units"]:
        t = u["seconds"]
        asked = "-" if u["asked"] is None else u["asked"]
        refit = "-" if u.get("refit_error") is None else f"{u['refit_error']:.4f} ({u['removal_error']:.3f})"
        lines.append(f"{u['unit']:>28}  {u['channels']:>5}->{u['kept']:<5}  {asked:>5}  {u['method']:>7}  "
                     f"{_number(u.get('gated_discrepancy'))}  {_number(u['exported_discrepancy'])}  {refit:>15}  "
                     f"{t['gram']:>7.3f}  {t['select']:>8.3f}  {t['evaluate'] + t['taylor']:>7.3f}  "
                     f"{t['export']:>8.3f}  {t['total']:>7.3f}  {u['stop']}")
    left = report.get("left_unpruned") or []
    if left:
        reasons = Counter(g["reason"] for g in left)
        lines.append(f"left unpruned: {len(left)} channel group(s) ("
                     + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) + ")")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return f"{'-':>9}" if value is None else f"{value:>9.5f}"


def plot_report(report: dict, path) -> None:
    plt = pyplot()
    units = report["units"]
    idx = range(len(units))
    fig, (ax_w, ax_d, ax_t) = plt.subplots(1, 3, figsize=(18, 4.5))
    ax_w.bar(idx, [u["channels"] for u in units], color="#bbbbbb", label="before")
    ax_w.bar(idx, [u["kept"] for u in units], color="#3b75af", label="after")
    ax_w.set_xticks(list(idx), [u["unit"] for u in units], rotation=60, ha="right", fontsize=7)
    ax_w.set_ylabel("channels")
    b, a = report["before"], report["after_prune"]
    ax_w.set_title(f"{report['model']} ({report['method']}): FLOPs x{a['flops'] / b['flops']:.2f}, "
                   f"acc {b['accuracy']:.3f} -> {a['accuracy']:.3f}")
    ax_w.legend()
    # discrepancies and refit errors span decades: a log axis, missing values left out
    for offset, (key, color, label) in zip((-0.27, 0.0, 0.27), (
            ("gated_discrepancy", "#e3a33b", "discrepancy, gated path"),
            ("exported_discrepancy", "#3b75af", "discrepancy as exported"),
            ("refit_error", "#59a14f", "refit relative error"))):
        shown = [(i, u[key]) for i, u in enumerate(units) if u.get(key) is not None and u[key] > 0]
        if shown:
            ax_d.bar([i + offset for i, _ in shown], [v for _, v in shown], width=0.27, color=color, label=label)
    if ax_d.patches:
        ax_d.set_yscale("log")
        ax_d.legend(fontsize=7)
    ax_d.set_xticks(list(idx), [u["unit"] for u in units], rotation=60, ha="right", fontsize=7)
    ax_d.set_title(f"per unit ({report['config']['discrepancy']} on the calibration images)")
    bottom = [0.0] * len(units)
    for part, color in (("gram", "#e3a33b"), ("select", "#3b75af"), ("evaluate", "#59a14f"), ("taylor", "#b07aa1"),
                        ("export", "#9c755f")):
        vals = [u["seconds"][part] for u in units]
        ax_t.bar(idx, vals, bottom=bottom, color=color, label=part)
        bottom = [x + y for x, y in zip(bottom, vals)]
    ax_t.set_xticks(list(idx), [u["unit"] for u in units], rotation=60, ha="right", fontsize=7)
    ax_t.set_ylabel("seconds")
    ax_t.set_title("time per unit")
    ax_t.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
