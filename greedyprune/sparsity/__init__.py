"""PQ Index / Gini sparsity reports of models and Sparsity-informed Adaptive Pruning (seed 003).

`pqi_report` measures a model's weights (neuron, layer, global scopes; many (p, q) pairs in one
pass); `run_sap` runs SAP or its one-shot / lottery-ticket baselines with checkpoints and reports.
"""
from .pqi import PAPER_P, PAPER_PAIR, PAPER_Q, PQIReport, ScopeStats, format_grid, format_table, gini_index, grid_pairs, pqi_report
from .report import plot_runs, results_table
from .sap import (METHODS, MaskedTraining, SAPConfig, SAPResult, apply_masks, full_masks, prune_counts,
                  prune_smallest, rewind, run_sap)
from .weights import SCOPES, prunable_weights

__all__ = ["PAPER_P", "PAPER_PAIR", "PAPER_Q", "SCOPES", "PQIReport", "ScopeStats", "format_grid", "format_table",
           "gini_index", "grid_pairs", "pqi_report", "prunable_weights", "plot_runs", "results_table",
           "METHODS", "MaskedTraining", "SAPConfig", "SAPResult", "apply_masks", "full_masks",
           "prune_counts", "prune_smallest", "rewind", "run_sap"]
