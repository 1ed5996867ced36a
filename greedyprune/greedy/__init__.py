"""Greedy local / global imitation pruning (seed 000): structured, channel level."""
from .config import METHODS, PruneConfig
from .evaluator import SuffixEvaluator
from .global_imitation import forward_selection, global_imitation
from .gram import contribution_gram
from .layerwise import choose, prune_model
from .local import local_imitation
from .plan import apply_plan, load_plan, make_plan, save_plan, select_channels
from .selection import Selection, UnitResult
from .suffix import discrepancy

__all__ = ["METHODS", "PruneConfig", "Selection", "SuffixEvaluator", "UnitResult", "apply_plan", "choose",
           "contribution_gram", "discrepancy", "forward_selection", "global_imitation", "load_plan", "local_imitation",
           "make_plan", "prune_model", "save_plan", "select_channels"]
