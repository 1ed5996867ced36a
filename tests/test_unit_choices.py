"""prune_model's per-layer choices: ignored_layers (units whose producers stay whole) and
width_ratios (a ratio per unit, by unit or module name), and their bad input."""
import pytest
import torch

from greedyprune.checks import ArgumentError
from greedyprune.greedy import prune_model
from greedyprune.models.vit import ViT


def tiny_vit():
    torch.manual_seed(0)
    return ViT(num_classes=5, in_channels=3, image_size=8, width=12, depth=2, heads=3, mlp_ratio=2).double().eval()


def images():
    return torch.randn(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_ignored_layers_leave_their_units_whole_and_width_ratios_override_the_ratio():
    model = tiny_vit()
    results = prune_model(model, images(), method="local", width_ratio=0.5, progress=False,
                          ignored_layers=["patch_embed.proj", model.blocks[1].mlp.fc1],
                          width_ratios={"blocks.0.mlp.fc1->blocks.0.mlp.fc2": 0.25, "blocks.1.attn": 1 / 3})
    assert [(r.unit, r.width, r.asked) for r in results] == [
        ("blocks.0.attn.qkv->blocks.0.attn.proj", 2, 2), ("blocks.0.mlp.fc1->blocks.0.mlp.fc2", 6, 6),
        ("blocks.1.attn.qkv->blocks.1.attn.proj", 1, 1)]
    assert model.pos_embed.shape[-1] == 12 and model.blocks[1].mlp.fc1.out_features == 24
    assert model.blocks[0].mlp.fc1.out_features == 6 and model.blocks[1].attn.num_heads == 1


def test_an_ignored_co_producer_leaves_its_stream_whole():
    with pytest.raises(ArgumentError, match="'ignored_layers' leaves none of the 1 unit"):
        prune_model(tiny_vit(), images(), method="local", width_ratio=0.5, groups=("embed",), progress=False,
                    ignored_layers=["blocks.0.mlp.fc2"])


@pytest.mark.parametrize("options, match", [
    (dict(ignored_layers=["blocks.9.mlp"]), r"'ignored_layers' holds 'blocks.9.mlp', which names no module"),
    (dict(ignored_layers=[torch.nn.Linear(2, 2)]), r"'ignored_layers' holds a Linear that is not a module"),
    (dict(width_ratios={"blocks.0.norm1": 0.5}), r"'width_ratios' names 'blocks.0.norm1', which is no unit"),
    (dict(width_ratios={"blocks.0.mlp.fc1": 1.5}), r"'width_ratio'"),
    (dict(width_ratios=[0.5]), r"'width_ratios' must map"),
])
def test_bad_per_layer_choices_are_one_error_naming_the_argument(options, match):
    with pytest.raises(ArgumentError, match=match):
        prune_model(tiny_vit(), images(), method="local", width_ratio=0.5, progress=False, **options)
