"""Demo on scikit-learn's bundled digits: the PQI paper's MLP and CNN pruned globally by SAP
(p=0.5, q=1), SAP (p=1, q=2), One Shot and Lottery Ticket (ratio 0.2); a results table, JSON and
one Figure-2-style PNG per model.

    python -m greedyprune.sparsity.demo OUT_DIR [--quick]
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..harness.data import load_dataset
from ..files import replace_atomically, write_json
from ..harness.model_source import resolve_model
from .report import plot_runs, results_table
from .sap import SAPConfig, run_sap

DEMO_METHODS = (dict(method="sap", p=0.5, q=1.0), dict(method="sap", p=1.0, q=2.0),
                dict(method="one-shot"), dict(method="lottery"))
# T (pruning iterations, T + 1 rounds) / epochs per model: full mode takes minutes on a 2-core CPU, quick
# mode well under one
DEMO_SETTINGS = {
    False: {"mlp": dict(iterations=30, epochs=30), "cnn": dict(iterations=15, epochs=5)},
    True: {"mlp": dict(iterations=3, epochs=3), "cnn": dict(iterations=2, epochs=1)},
}


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def run_demo(out_dir, *, quick: bool = False, progress: bool = True, seed: int = 0) -> dict:
    """Run every method on both models, print and save the table (demo.txt), demo.json, mlp.png and cnn.png.

    Returns {"quick", "settings", "runs": {model: {method label: history}}, "table"}; each run's
    checkpoint, results.json and model.pt lie in out_dir/<model>/<method>/.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    runs: dict[str, dict[str, list[dict]]] = {}
    for arch, settings in DEMO_SETTINGS[bool(quick)].items():
        runs[arch] = {}
        for method in DEMO_METHODS:
            config = SAPConfig(scope="global", seed=seed, **settings, **method)
            model = resolve_model(arch, "digits", without_weights="init", seed=seed)
            result = run_sap(model, train_set, test_set, config, out_dir=out / arch / _slug(config.label),
                             progress=progress, figure=False)
            runs[arch][config.label] = result.history
        plot_runs(runs[arch], out / f"{arch}.png",
                  title=f"{arch.upper()} on digits, global pruning ({settings['epochs']} epochs per iteration)")
    table = "\n".join(f"{arch.upper()} (T = {DEMO_SETTINGS[bool(quick)][arch]['iterations']} pruning iterations, "
                      f"{DEMO_SETTINGS[bool(quick)][arch]['epochs']} epochs each)\n" + results_table(by_method)
                      for arch, by_method in runs.items())
    print(table)
    replace_atomically(out / "demo.txt", lambda f: f.write(table.encode()))
    summary = {"quick": bool(quick), "settings": DEMO_SETTINGS[bool(quick)], "runs": runs, "table": table}
    write_json(out / "demo.json", summary)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--quick", action="store_true", help="a few iterations and epochs (under a minute)")
    args = parser.parse_args(argv)
    run_demo(args.out_dir, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
