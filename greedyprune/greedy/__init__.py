"""Greedy local / global imitation pruning (seed 000): structured, channel level."""
from .global_imitation import forward_selection, global_imitation
from .gram import contribution_gram
from .layerwise import METHODS, UnitResult, choose, prune_model
from .local import local_imitation
from .plan import apply_plan, load_plan, make_plan, save_plan
from .selection import Selection
from .suffix import SuffixEvaluator, discrepancy

__all__ = ["METHODS", "Selection", "SuffixEvaluator", "UnitResult", "apply_plan", "choose", "contribution_gram", "discrepancy",
           "forward_selection", "global_imitation", "load_plan", "local_imitation", "make_plan", "prune_model", "save_plan"]
