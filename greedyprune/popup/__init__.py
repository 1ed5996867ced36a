"""SR-popup lottery-jackpot search (seed 002): masked layers with straight-through scores, magnitude
initialisation, the search loop with swap-rate schedules, export and reports.

    masked = popup.wrap(model)                      # every Conv2d/Linear masked, classifier included
    history = popup.search(masked, train_set, test_set, popup.SearchConfig(sparsity=0.9), out_dir="run")
    plain = popup.export(masked)                    # weight * keep baked in
"""
from .masked import MaskedConv2d, MaskedLinear, MaskedModel, StraightThroughMask, export, select_layers, wrap
from .search import (SCHEDULES, SearchConfig, StepInfo, initialize, layer_keep_counts, magnitude_keep, overlap,
                     popup_step, search, swap_rate)

__all__ = ["MaskedConv2d", "MaskedLinear", "MaskedModel", "StraightThroughMask", "export", "select_layers", "wrap",
           "SCHEDULES", "SearchConfig", "StepInfo", "initialize", "layer_keep_counts", "magnitude_keep", "overlap",
           "popup_step", "search", "swap_rate"]
