"""Masked layers: wrapping, the straight-through gradient, export (greedyprune.popup.masked)."""
import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import prune

from greedyprune.popup import MaskedConv2d, MaskedLinear, export, wrap


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 5 * 5, 8), nn.ReLU(), nn.Linear(8, 3))


def random_keep(masked, seed=1):
    gen = torch.Generator().manual_seed(seed)
    masked.keep = torch.rand(masked.keep.shape, generator=gen) < 0.3
    with torch.no_grad():
        masked.scores.copy_(torch.rand(masked.scores.shape, generator=gen))


def test_wrap_masks_conv_and_linear_and_freezes_everything():
    net = tiny_net()
    assert wrap(net).layer_names == ["0", "3", "7", "9"] and wrap(net).unmasked == []  # the paper's scope
    masked = wrap(net, exclude_classifier=True)
    assert masked.layer_names == ["0", "3", "7"] and masked.unmasked == ["9"]
    assert [type(m) for m in masked.layers] == [MaskedConv2d, MaskedConv2d, MaskedLinear]
    assert type(masked.model[9]) is nn.Linear
    sizes = [net[0].weight.numel(), net[3].weight.numel(), net[7].weight.numel()]
    assert masked.offsets.tolist() == [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
    assert [name for name, p in masked.named_parameters() if p.requires_grad] == ["scores"]
    # the argument is left untouched
    assert type(net[0]) is nn.Conv2d and all(p.requires_grad for p in net.parameters())
    assert wrap(net, include=["7", "9"], exclude_classifier=True).layer_names == ["7"]
    assert wrap(net, exclude="[03]").layer_names == ["7", "9"]


def test_wrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'model'"):
        wrap("not a model")
    with pytest.raises(ValueError, match="'model'"):
        wrap(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="'include'"):
        wrap(tiny_net(), include=["conv*"])
    with pytest.raises(ValueError, match="'exclude'"):
        wrap(tiny_net(), exclude=["nothing"])
    with pytest.raises(ValueError, match="leave no layer"):
        wrap(tiny_net(), include=["9"], exclude_classifier=True)
    with pytest.raises(ValueError, match="'include'"):
        wrap(tiny_net(), include=[3])


def _dense_params_with(net, masked, weights):
    """The dense net's parameters and buffers with the wrapped weights replaced by `weights`."""
    params = {**dict(net.named_parameters()), **dict(net.named_buffers())}
    for name, w in zip(masked.layer_names, weights):
        params[f"{name}.weight"] = w
    return params


def test_forward_uses_weight_times_keep_and_scores_get_the_straight_through_gradient():
    net = tiny_net()
    masked = wrap(net)
    random_keep(masked)
    x = torch.randn(5, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 1, 0])
    loss = nn.functional.cross_entropy(masked(x), target)
    loss.backward()
    assert all(p.grad is None for p in masked.model.parameters())  # weights, biases, BN affine frozen

    # autograd of L(W * s) with respect to s, at s = the current binary mask
    keep_views = [layer.keep_view() for layer in masked.layers]
    s = [k.float().requires_grad_(True) for k in keep_views]
    weights = [layer.weight.detach() * s_l for layer, s_l in zip(masked.layers, s)]
    reference_loss = nn.functional.cross_entropy(functional_call(net, _dense_params_with(net, masked, weights), (x,)),
                                                 target)
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=0)
    expected = torch.autograd.grad(reference_loss, s)
    torch.testing.assert_close(masked.scores.grad, torch.cat([g.reshape(-1) for g in expected]))
    # not a vacuous check: pruned entries get a gradient too, and it is dL/dW_eff * W
    pruned = ~masked.keep
    assert masked.scores.grad[pruned].abs().sum() > 0
    # the inner model called on its own (layers slice the flat scores themselves) agrees
    through_masked = masked.scores.grad.clone()
    masked.scores.grad = None
    nn.functional.cross_entropy(masked.model(x), target).backward()
    torch.testing.assert_close(masked.scores.grad, through_masked)


def test_layers_read_the_current_flat_keep_after_it_is_replaced_or_copied():
    masked = wrap(tiny_net())
    x = torch.randn(3, 2, 5, 5)
    masked.eval()
    dense_out = masked(x)
    masked.keep = torch.zeros_like(masked.keep)
    assert not torch.equal(masked(x), dense_out)
    twin = copy.deepcopy(masked)
    twin.keep = torch.ones_like(twin.keep)
    torch.testing.assert_close(twin(x), dense_out)  # the copy reads its own keep ...
    assert not torch.equal(masked(x), dense_out)  # ... and the original still reads its own


@pytest.mark.parametrize("prune_masks", [False, True])
def test_export_equals_the_masked_model(prune_masks):
    masked = wrap(tiny_net())
    random_keep(masked)
    masked.eval()
    x = torch.randn(6, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    plain = export(masked, prune_masks=prune_masks).eval()
    assert not any(isinstance(m, (MaskedConv2d, MaskedLinear)) for m in plain.modules())
    assert "scores" not in dict(plain.named_parameters())
    torch.testing.assert_close(plain(x), masked(x), rtol=0, atol=0)
    for name, layer in zip(masked.layer_names, masked.layers):
        exported = plain.get_submodule(name)
        keep = layer.keep_view()
        assert torch.equal(exported.weight, layer.weight * keep)
        assert bool((exported.weight[~keep] == 0).all())
        if prune_masks:
            assert prune.is_pruned(exported) and torch.equal(exported.weight_mask, keep.float())
            prune.remove(exported, "weight")
            assert torch.equal(exported.weight, layer.weight * keep)
    assert all(p.requires_grad for p in plain.parameters())
    assert masked.scores.requires_grad and isinstance(masked.model[0], MaskedConv2d)  # the source is unchanged


def test_export_rejects_a_plain_model():
    with pytest.raises(ValueError, match="'masked'"):
        export(tiny_net())
