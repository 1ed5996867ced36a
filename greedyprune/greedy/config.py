"""The settings of one greedy-imitation run (Algorithm 2 of seed 000), each default in one place."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..checks import ArgumentError, arg_error, check_choice, check_int, check_real
from .criteria import CRITERIA
from .exporters import EXPORTERS, REFIT_TARGETS
from .outputs import DISCREPANCIES
from .precision import PRECISIONS
from .surgery import UNIT_KINDS

# The network discrepancy each unit may add when no stopping rule is given.
DEFAULT_TOL = 0.02

# PruneConfig's method and fold defaults give the best pruned model without fine-tuning (a least-squares
# refit of every consumer); after fine-tuning for a few epochs plain removal ends higher
# (benchmarks/RESULTS.md, "Against Torch-Pruning"), so a run that fine-tunes and names neither takes these.
FINETUNE_DEFAULTS = {"method": "hybrid", "fold": "none"}


@dataclass(frozen=True)
class PruneConfig:
    """How `prune_model` chooses and exports each unit's channels.

    method: a criteria.CRITERIA name: refit (channels chosen for the least-squares refit) | local |
        global | hybrid (Algorithm 2: both, the narrower wins) | gfs (the authors' released forward
        selection, scored on true labels) | magnitude (group L1, Torch-Pruning's importance).
    tol: the network discrepancy each unit may add (per unit, against the network as pruned so far).
    prune_model needs a stopping rule: tol, network_budget or width_ratio (or a width with either);
        run_pruning takes DEFAULT_TOL (0.02) where none is given and no FLOP target sets one.
    network_budget: instead of tol, the discrepancy the whole network may gain, split evenly over
        the units pruned (each unit's tol = network_budget / units; the per-unit gains add up
        approximately, as each is measured against the network as pruned so far).
    width_ratio: alone, every unit ends at exactly ceil(width_ratio * N) channels; with tol, a cap.
    discrepancy: kl | mse of the logits, or ce-gap: the rise of the cross-entropy on true labels over the
        original's (the training-loss gap seed 000's epsilon bounds; needs labels); ce: that cross-entropy (gfs).
    positions_per_image: subsample this many positions per image for the Grams (None: all).
    exact_until / taylor_top: global imitation scores every candidate exactly while the unit has at
        most exact_until channels, then only the taylor_top best by Taylor score.
    step_batch: global imitation and its Taylor scores draw a fresh mini-batch of this many
        calibration images at every step (Algorithm 1, line 4; the paper uses 64); None: every
        step scores on all calibration images (one fixed batch). Under torchrun prune_model takes
        it per process; run_pruning (the CLI's --step-batch) as the global mini-batch.
    memory_budget: bytes for candidate chunks and cached prefixes (None: a quarter of the free
        memory, at most 8 GiB).
    fold: how a unit is exported (exporters.EXPORTERS): "reconstruct" refits the consumer's weights
        to the kept channels by least squares (best without fine-tuning); "none" removes the other
        channels plainly (best after a few epochs of fine-tuning: FINETUNE_DEFAULTS); "consumer",
        "producer", "split" fold the gates N a_i into the weights.
    recalibrate_bn: re-estimate BatchNorm statistics on the calibration images after each unit,
        so each unit imitates the network as it is exported and as fine-tuning starts.
    refit_damping / refit_target: fold "reconstruct" only (refit.py): the ridge damping as a
        fraction of the mean diagonal, and the output the refit matches: "original" (the unpruned
        network's consumer output; corrects what earlier units changed) or "current" (the
        consumer's output just before the unit).
    groups: the kinds of channel group pruned (surgery.UNIT_KINDS: "inner", a layer's hidden
        channels read by one layer; "residual", a residual stream with every layer that makes or
        reads it; "heads", an attention module's whole heads; "embed", a residual stream read
        through LayerNorms or RMSNorms, a transformer's embedding width); the others are left
        whole and listed in the report.
    round_to: every unit but heads (inner, residual, embed) keeps a multiple of this many
        channels (or all of them), for hardware that runs widths of multiples of 8 or 16 fastest; a width or a
        tolerance's width is rounded up. Heads are whole already and not rounded.
    precision: the dtype the criteria's forwards run in ("bf16", "fp16": torch.autocast over global
        imitation's candidates and Taylor passes, tolerance probes and refit evaluations), for GPU
        speed; the Gram pass, the export and BN re-estimation stay float32 (precision.py).
    channels_last: every forward of the run (Gram passes, candidates, probes, BN re-estimation)
        with the convolutions' weights in NHWC layout, so activations flow channels-last, as
        GPUs' tensor-core convolutions want them (precision.py, `lay_out`). None: on a CUDA
        device for a model with 2-D convolutions. The model is contiguous again afterwards.
    """

    method: str = "refit"
    tol: float | None = None
    network_budget: float | None = None
    width_ratio: float | None = None
    discrepancy: str = "kl"
    positions_per_image: int | None = None
    exact_until: int = 25
    taylor_top: int = 5
    step_batch: int | None = 64
    memory_budget: int | None = None
    fold: str = "reconstruct"
    recalibrate_bn: bool = True
    refit_damping: float = 0.01
    refit_target: str = "original"
    groups: tuple[str, ...] = UNIT_KINDS
    round_to: int = 1
    precision: str = "fp32"
    channels_last: bool | None = None

    def __post_init__(self):
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise arg_error("channels_last", f"must be True, False or None, got {self.channels_last!r}")
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("method", self.method, tuple(CRITERIA))
        if self.network_budget is not None:
            check_real("network_budget", self.network_budget, low=0.0)
            if self.tol is not None:
                raise ArgumentError("greedyprune: give argument 'tol' (per unit) or 'network_budget' (split over the "
                                    "units), not both")
        if self.tol is not None:
            check_real("tol", self.tol, low=0.0)
        if self.width_ratio is not None:
            check_real("width_ratio", self.width_ratio, low=0.0, high=1.0, low_open=True)
        check_choice("discrepancy", self.discrepancy, DISCREPANCIES)
        check_choice("fold", self.fold, tuple(EXPORTERS))
        for name, low in (("exact_until", 0), ("taylor_top", 1)):
            check_int(name, getattr(self, name), minimum=low)
        for name in ("step_batch", "memory_budget"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        if self.positions_per_image is not None:
            check_int("positions_per_image", self.positions_per_image, minimum=1)
        check_real("refit_damping", self.refit_damping, low=0.0, low_open=True)
        check_choice("refit_target", self.refit_target, REFIT_TARGETS)
        if isinstance(self.groups, str) or not self.groups:
            raise arg_error("groups", f"must be a non-empty sequence of {', '.join(UNIT_KINDS)}, got {self.groups!r}")
        for kind in self.groups:
            check_choice("groups", kind, UNIT_KINDS)
        object.__setattr__(self, "groups", tuple(dict.fromkeys(self.groups)))
        check_int("round_to", self.round_to, minimum=1)
        if not isinstance(self.recalibrate_bn, bool):
            raise arg_error("recalibrate_bn", f"must be a bool, got {self.recalibrate_bn!r}")

    def max_neurons(self, channels: int, kind: str = "inner") -> int:
        """The widest a unit of `channels` channels of `kind` may end."""
        width = channels if self.width_ratio is None else max(1, math.ceil(self.width_ratio * channels))
        return self.rounded(width, channels, kind)

    def rounded(self, width: int, channels: int, kind: str) -> int:
        """`width` rounded up to a multiple of round_to, at most `channels` (heads: as it is)."""
        if kind == "heads":
            return width
        return min(channels, -(-width // self.round_to) * self.round_to)

    def check_stopping_rule(self) -> None:
        if self.tol is None and self.width_ratio is None and self.network_budget is None:
            raise ArgumentError("greedyprune: give argument 'tol' (discrepancy per unit), 'network_budget' or "
                                "'width_ratio' (or a width with either)")

    def per_unit(self, units: int) -> PruneConfig:
        """The rule each of `units` units follows: network_budget split evenly (each unit may add its
        share)."""
        self.check_stopping_rule()
        if self.network_budget is not None:
            return replace(self, tol=self.network_budget / units, network_budget=None)
        return self

    def with_default_tol(self) -> PruneConfig:
        """This config, with tol = DEFAULT_TOL where it gives no stopping rule."""
        if self.tol is None and self.width_ratio is None and self.network_budget is None:
            return replace(self, tol=DEFAULT_TOL)
        return self

    @property
    def measured_on_export(self) -> bool:
        """Whether a unit's discrepancy is measured once, on the model as exported: the criterion
        chooses without the network discrepancy (local imitation to a width) and the export changes
        the gated function (plain removal, BN re-estimated)."""
        rule = self.with_default_tol()
        return (not CRITERIA[self.method].needs_evaluator(rule) and not EXPORTERS[self.fold].keeps_function
                and self.recalibrate_bn)

    @property
    def fill(self) -> bool:
        """Whether width_ratio is a width to reach (no tol) rather than a cap."""
        return self.width_ratio is not None and self.tol is None and self.network_budget is None
