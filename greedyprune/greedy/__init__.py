"""Greedy local / global imitation pruning (seed 000): structured, channel level.

Layers: `run_pruning` (pipeline.py) -> `prune_model` (layerwise.py) -> a criterion
(criteria.CRITERIA) and an exporter (exporters.EXPORTERS) per unit -> greedyprune.ops."""
from .config import DEFAULT_TOL, FINETUNE_DEFAULTS, PruneConfig
from .criteria import CRITERIA, METHODS
from .criterion import Criterion, UnitContext
from .evaluator import SuffixEvaluator
from .exporters import EXPORTERS, Exporter
from .global_imitation import forward_selection, global_imitation
from .gram import contribution_gram
from .moments import ConsumerMoments, stream_moments
from .hybrid import choose
from .layerwise import prune_model
from .local import local_imitation
from .outputs import discrepancy, logits_of
from .plan import apply_plan, load_plan, make_plan, save_plan, select_channels
from .selection import Selection, UnitResult

__all__ = ["CRITERIA", "ConsumerMoments", "Criterion", "DEFAULT_TOL", "EXPORTERS", "Exporter", "FINETUNE_DEFAULTS", "METHODS",
           "PruneConfig", "Selection", "SuffixEvaluator", "UnitContext", "UnitResult", "apply_plan", "choose",
           "contribution_gram", "discrepancy", "forward_selection", "global_imitation", "load_plan",
           "local_imitation", "logits_of", "make_plan", "prune_model", "save_plan", "select_channels",
           "stream_moments"]
