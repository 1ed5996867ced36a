"""load_pruned keeps what a resized layer is: a subclass of Conv2d / BatchNorm (timm's StdConv2d,
BatchNormAct2d) keeps its type, activation and other state through prune -> save -> load_pruned,
LayerScale's per-channel gamma follows the file, and a layer that cannot be resized is named."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from greedyprune import greedy
from greedyprune.models import load_pruned, save_model


class StandardisedConv(nn.Conv2d):
    """timm's StdConv2d in miniature: the weight standardised per output channel in forward."""

    def __init__(self, *args, eps=1e-6, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.,
                         eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BatchNormWithActivation(nn.BatchNorm2d):
    """timm's BatchNormAct2d in miniature: the activation is a submodule of the norm."""

    def __init__(self, channels, act):
        super().__init__(channels)
        self.act = act

    def forward(self, x):
        return self.act(super().forward(x))


class Scale(nn.Module):
    """timm's LayerScale on an NCHW map: one learned factor per channel."""

    def __init__(self, channels):
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1)


def _net(conv, norm, scale, hidden=12):
    return nn.Sequential(conv(3, hidden, 3, padding=1, bias=False), norm(hidden), scale(hidden),
                         nn.Conv2d(hidden, 6, 3, padding=1), nn.Flatten(), nn.LazyLinear(4))


def _prune_save_reload(conv, norm, scale, tmp_path):
    torch.manual_seed(0)
    build = lambda: _net(conv, norm, scale)  # noqa: E731
    model = build()
    images = torch.randn(32, 3, 6, 6)
    model(images)  # materialise the lazy head
    model.eval()
    greedy.prune_model(model, images, method="magnitude", width_ratio=0.5, fold="none", progress=False,
                       recalibrate_bn=False)
    assert model[1].num_features == 6  # the hidden channels were pruned
    save_model(model, tmp_path / "pruned.pt")
    fresh = build()
    fresh(images)
    reloaded = load_pruned(fresh, tmp_path / "pruned.pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), model(images), rtol=0, atol=0)
    return reloaded


def test_subclassed_layers_keep_type_activation_and_state_through_a_reload(tmp_path):
    reloaded = _prune_save_reload(lambda *a, **k: StandardisedConv(*a, eps=1e-3, **k),
                                  lambda c: BatchNormWithActivation(c, nn.SiLU()), Scale, tmp_path)
    conv, norm, scale = reloaded[0], reloaded[1], reloaded[2]
    assert type(conv) is StandardisedConv and conv.eps == 1e-3 and conv.out_channels == 6
    assert type(norm) is BatchNormWithActivation and isinstance(norm.act, nn.SiLU)
    assert norm.running_mean.shape == (6,) and scale.gamma.shape == (6,)


def test_timm_layers_survive_prune_save_load_pruned(tmp_path):
    layers = pytest.importorskip("timm.layers", reason="timm not installed")
    reloaded = _prune_save_reload(layers.StdConv2d, lambda c: layers.BatchNormAct2d(c, act_layer=nn.SiLU),
                                  _timm_layer_scale(layers), tmp_path)
    assert type(reloaded[0]) is layers.StdConv2d and reloaded[0].out_channels == 6
    assert type(reloaded[1]) is layers.BatchNormAct2d and isinstance(reloaded[1].act, nn.SiLU)


def _timm_layer_scale(layers):
    def scale(channels):  # LayerScale multiplies the last dimension: channels-last inside
        class ChannelsLast(nn.Module):
            def __init__(self):
                super().__init__()
                self.ls = layers.LayerScale(channels)

            def forward(self, x):
                return self.ls(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return ChannelsLast()
    return scale


class NormWithChannelState(nn.BatchNorm2d):
    """A norm holding per-channel state the file does not carry (a non-persistent buffer)."""

    def __init__(self, channels):
        super().__init__(channels)
        self.register_buffer("channel_offsets", torch.zeros(channels), persistent=False)


@pytest.mark.parametrize("layer, refused", [
    (lambda c: NormWithChannelState(c), r"layer '1' \(NormWithChannelState\): its channel_offsets \(12,\) is not in "
                                        r"the file"),
    (lambda c: nn.ConvTranspose2d(c, c, 1), r"cannot resize layer '1' \(ConvTranspose2d\)"),
])
def test_a_layer_that_cannot_be_resized_is_named(layer, refused, tmp_path):
    small, fresh = nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5)), nn.Sequential(nn.Conv2d(3, 12, 1), layer(12))
    if isinstance(fresh[1], nn.ConvTranspose2d):
        small[1] = nn.ConvTranspose2d(5, 5, 1)
    torch.save(small.state_dict(), tmp_path / "pruned.pt")
    with pytest.raises(ValueError, match=refused):
        load_pruned(fresh, tmp_path / "pruned.pt")
