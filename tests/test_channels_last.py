"""PruneConfig.channels_last: every pruning forward with the convolutions in NHWC layout (for GPUs'
tensor cores). On the CPU the layout changes only float rounding: the same plans as contiguous
forwards, activations channels-last throughout the run, and a contiguous model after it."""
import copy

import pytest
import torch
from torch import nn

from greedyprune.greedy import PruneConfig, prune_model
from greedyprune.greedy.precision import uses_channels_last
from greedyprune.greedy.surgery import UnitGraph
from greedyprune.harness.data import load_dataset
from greedyprune.harness.model_source import resolve_model
from test_residual_units import _images, _net


def _cnn_and_images(n=64):
    torch.manual_seed(0)
    model = resolve_model("cnn", "digits", without_weights="init")
    x, y = load_dataset("digits", "train").tensors
    return model.eval(), x[:n], y[:n]


def _layouts_seen(model):
    """Whether each conv output of the run was channels-last (and not NCHW) contiguous, by hooks."""
    seen = []

    def record(_module, _args, out):
        if out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
            seen.append(out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous())

    # a weight of one input channel is contiguous both ways, and torch then keeps the input's layout
    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
    return seen, handles


@pytest.mark.parametrize("method, fold", [("local", "none"), ("global", "none"), ("refit", "reconstruct")])
def test_channels_last_forwards_give_the_contiguous_plan(method, fold):
    model, x, y = _cnn_and_images()
    plans = {}
    for channels_last in (False, True):
        pruned = copy.deepcopy(model)
        graph = UnitGraph(pruned, x[:2])  # traced before the hooks: the run's forwards are what they see
        seen, handles = _layouts_seen(pruned)
        results = prune_model(pruned, x, method=method, fold=fold, width_ratio=0.5, channels_last=channels_last,
                              graph=graph,
                              units=["block1.conv->block2.conv", "block2.conv->block3.conv"] if method == "global"
                              else None, progress=False)
        for handle in handles:
            handle.remove()
        assert seen and all(seen) == channels_last and any(seen) == channels_last
        assert all(p.is_contiguous() for p in pruned.parameters())
        plans[channels_last] = (results, pruned)
    (flat, flat_model), (nhwc, nhwc_model) = plans[False], plans[True]
    # where the refit reproduces the consumer's output to rounding (the fc reads 256 of 512 channels
    # for 10 outputs: refit errors 5e-8 and 4e-8), choices tie and rounding picks one
    tied = [r.refit_error is not None and r.refit_error < 1e-6 for r in flat]
    assert [r.kept for r, t in zip(nhwc, tied) if not t] == [r.kept for r, t in zip(flat, tied) if not t]
    assert sum(not t for t in tied) >= 2  # the comparison is not empty
    for a, b in zip(nhwc, flat):
        assert a.loss == pytest.approx(b.loss, rel=1e-4, abs=1e-7)
    torch.testing.assert_close(nhwc_model(x), flat_model(x), rtol=1e-4, atol=1e-5)


def test_residual_streams_prune_channels_last():
    x = _images()
    flat, nhwc = _net(), _net()
    kept = [[r.kept for r in prune_model(m, x, method="local", width_ratio=0.5, channels_last=c, progress=False)]
            for m, c in ((flat, False), (nhwc, True))]
    assert kept[0] == kept[1]
    torch.testing.assert_close(nhwc(x), flat(x), rtol=1e-4, atol=1e-5)


def test_the_default_lays_out_convnets_on_cuda_only():
    model, _, _ = _cnn_and_images()
    assert not uses_channels_last(None, model)  # on the CPU
    assert uses_channels_last(True, model)
    assert not uses_channels_last(True, nn.Sequential(nn.Linear(3, 2)))  # no convolution: nothing to lay out
    with pytest.raises(TypeError, match="'channels_last'"):
        PruneConfig(channels_last="yes")


@pytest.mark.parametrize("flag, value", [([], None), (["--channels-last", "auto"], None), (["--channels-last", "on"], True),
                                         (["--channels-last", "off"], False)])
def test_the_prune_flag_reaches_the_config(flag, value):
    from greedyprune.cli import build_parser
    from greedyprune.greedy.commands import prune_config
    assert prune_config(build_parser().parse_args(["prune", "--model", "cnn", *flag])).channels_last is value
