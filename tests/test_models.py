"""The model zoo: shapes, parameter counts against published figures, fx tracing, torch-pruning
dependency graphs, the conv -> BN -> activation structure, save/load and errors."""
import importlib.util
import json
import operator
from pathlib import Path

import pytest
import torch
import torch.fx
import torch_pruning as tp
from torch import nn

from greedyprune.models import MODEL_NAMES, build_model, load_model, load_weights_into, save_model

# (in_channels, image_size): CIFAR-like RGB, and scikit-learn's 8x8 grey digits.
INPUT_SHAPES = [(3, 32), (1, 8)]
ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_model_names():
    assert MODEL_NAMES == ("mlp", "cnn", "vgg11", "vgg19", "resnet20", "resnet32", "resnet56",
                           "resnet18", "resnet34", "resnet50", "mobilenet_v2", "vit_tiny")


@pytest.mark.parametrize("in_channels, image_size", INPUT_SHAPES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_fx_trace_and_dependency_graph(name, in_channels, image_size):
    """Train mode out of the builder, (batch, num_classes) outputs, fx trace equal to eager, and a
    torch-pruning DependencyGraph that builds."""
    model = build_model(name, num_classes=7, in_channels=in_channels, image_size=image_size)
    assert all(module.training for module in model.modules())
    inputs = torch.randn(2, in_channels, image_size, image_size)
    out = model(inputs)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    model.eval()
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(inputs), model(inputs))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    assert len(list(graph.get_all_groups())) > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_init_is_deterministic_given_the_seed(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, image_size=8)
    torch.manual_seed(0)
    again = build_model(name, in_channels=1, image_size=8)
    for (key, value), (key_again, value_again) in zip(model.state_dict().items(), again.state_dict().items()):
        assert key == key_again and torch.equal(value, value_again), key


# Published figures: torchvision's ImageNet models (1000 classes); the PQ Index paper's appendix
# Table 3 (MLP 136.1K on FashionMNIST, 428.9K on CIFAR10; CNN 1.6M; ResNet18 11.2M for 10 classes);
# CIFAR VGG-BN with Linear(512, 10): 9,231,114 and 20,040,522 (e.g. kuangliu/pytorch-cifar);
# CIFAR ResNets with projection shortcuts (option B): 272,474 / 855,770 for ResNet-20/56
# (osmr/imgclsmob), i.e. He et al.'s 0.27M / 0.46M / 0.85M (option A: 269,722 / 464,154 / 853,018)
# plus 2,752 for the two 1x1 conv + BN projections.
PARAMETER_COUNTS = [
    ("resnet18", 1000, 3, 32, 11_689_512),
    ("resnet34", 1000, 3, 32, 21_797_672),
    ("resnet50", 1000, 3, 32, 25_557_032),
    ("mobilenet_v2", 1000, 3, 32, 3_504_872),
    ("resnet18", 10, 3, 32, 11_181_642),
    ("resnet20", 10, 3, 32, 269_722 + 2_752),
    ("resnet32", 10, 3, 32, 464_154 + 2_752),
    ("resnet56", 10, 3, 32, 853_018 + 2_752),
    ("vgg11", 10, 3, 32, 9_231_114),
    ("vgg19", 10, 3, 32, 20_040_522),
    ("mlp", 10, 1, 28, 136_074),
    ("mlp", 10, 3, 32, 428_938),
    ("cnn", 10, 3, 32, 1_558_026),
]


@pytest.mark.parametrize("name, num_classes, in_channels, image_size, expected", PARAMETER_COUNTS)
def test_parameter_count(name, num_classes, in_channels, image_size, expected):
    model = build_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    assert parameter_count(model) == expected


@pytest.mark.parametrize("name, image_size, pools", [
    ("cnn", 32, 4), ("cnn", 28, 4), ("cnn", 8, 3), ("vgg11", 32, 5), ("vgg19", 8, 3)])
def test_max_pools_stop_at_one_pixel(name, image_size, pools):
    model = build_model(name, in_channels=1, image_size=image_size)
    assert sum(isinstance(module, nn.MaxPool2d) for module in model.modules()) == pools


def test_imagenet_resnet_module_names_follow_torchvision():
    keys = set(build_model("resnet50", num_classes=1000).state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
            "layer4.2.conv3.weight", "layer4.2.bn3.num_batches_tracked", "fc.weight", "fc.bias"} <= keys
    assert "layer1.0.downsample.0.weight" not in build_model("resnet18").state_dict()
    keys = set(build_model("mobilenet_v2", num_classes=1000).state_dict())
    assert {"features.0.0.weight", "features.0.1.weight", "features.1.conv.0.0.weight", "features.1.conv.1.weight",
            "features.2.conv.0.0.weight", "features.2.conv.3.running_var", "features.18.0.weight",
            "classifier.1.weight"} <= keys


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "mobilenet_v2"])
def test_state_dict_layout_equals_torchvision(name):
    pytest.importorskip("torchvision")
    ours = build_model(name, num_classes=1000).state_dict()
    theirs = build_model(f"torchvision:{name}", num_classes=1000).state_dict()
    assert {key: value.shape for key, value in ours.items()} == {key: value.shape for key, value in theirs.items()}


TORCHVISION_LAYOUTS = json.loads((Path(__file__).parent / "data" / "torchvision_layouts.json").read_text())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "mobilenet_v2"])
def test_torchvision_layout_state_dict_loads_key_for_key(name, tmp_path):
    """A state dict built to torchvision's layout (keys and shapes recorded from torchvision itself,
    tests/data/torchvision_layouts.json), saved as a DDP checkpoint, loads into the zoo model through
    --weights' path and every tensor lands under its own key."""
    generator = torch.Generator().manual_seed(0)
    theirs = {key: (torch.randint(0, 100, shape, generator=generator) if key.endswith("num_batches_tracked")
                    else torch.randn(shape, generator=generator)) for key, shape in TORCHVISION_LAYOUTS[name]}
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 90, "model": {f"module.{k}": v for k, v in theirs.items()}}, path)
    model = load_weights_into(build_model(name, num_classes=1000), path)
    ours = model.state_dict()
    assert list(ours) == list(theirs)  # same keys in the same order
    for key, value in theirs.items():
        assert torch.equal(ours[key], value.to(ours[key].dtype)), key


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "vit_tiny"])  # the ViT: test_transformers.py
def test_each_conv_has_its_own_bn_and_activation(name):
    """In the fx graph every module is called once, activations are not in place, each Conv2d feeds
    only its BatchNorm2d, each BN feeds an activation or a residual add (or, in MobileNetV2's linear
    bottlenecks, the next block's conv and shortcut), and each hidden Linear feeds an activation."""
    model = build_model(name, num_classes=7)
    graph = torch.fx.symbolic_trace(model).graph
    module_calls = [node for node in graph.nodes if node.op == "call_module"]
    targets = [node.target for node in module_calls]
    assert len(targets) == len(set(targets)), "a module is called more than once"

    def kind(node):
        if node.op == "call_module":
            return model.get_submodule(node.target)
        return node.target

    for node in module_calls:
        module = kind(node)
        users = [kind(user) for user in node.users]
        if isinstance(module, ACTIVATIONS):
            assert not module.inplace, node.target
        elif isinstance(module, nn.Conv2d):
            assert len(users) == 1 and isinstance(users[0], nn.BatchNorm2d), node.target
        elif isinstance(module, nn.BatchNorm2d):
            linear_bottleneck = name == "mobilenet_v2"
            assert len(users) == 1 or linear_bottleneck, node.target
            assert all(isinstance(user, ACTIVATIONS) or user is operator.add
                       or (linear_bottleneck and isinstance(user, nn.Conv2d)) for user in users), node.target
        elif isinstance(module, nn.Linear) and users[0] != "output":
            assert len(users) == 1 and isinstance(users[0], ACTIVATIONS), node.target


def test_save_load_round_trip_of_a_pruned_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=7)
    inputs = torch.randn(2, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    graph.get_pruning_group(model.layer1[0].conv1, tp.prune_conv_out_channels, idxs=[0, 3, 5]).prune()
    assert model.layer1[0].conv1.out_channels == 13
    path = tmp_path / "pruned.pt"
    save_model(model.eval(), path, sparsity=0.2, method="greedy")
    loaded, meta = load_model(path)
    assert meta == {"sparsity": 0.2, "method": "greedy"}
    assert loaded.layer1[0].conv1.out_channels == 13
    with torch.no_grad():
        assert torch.equal(loaded(inputs), model(inputs))
    assert torch.load(path, weights_only=True)["format"] == 2  # data only: plain PyTorch reads it


def test_load_model_rejects_files_it_did_not_write(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    state_dict = tmp_path / "state_dict.pt"
    torch.save(build_model("mlp").state_dict(), state_dict)
    for path in (tmp_path / "missing.pt", tmp_path, garbage, empty, state_dict):
        with pytest.raises(ValueError, match="'path'"):
            load_model(path)


def test_save_model_rejects_a_non_module(tmp_path):
    with pytest.raises(TypeError, match="'model'"):
        save_model({"weight": torch.zeros(1)}, tmp_path / "x.pt")


@pytest.mark.parametrize("name", ["resnet", "ResNet18", "", "vgg16", "foo:bar", "torchvision:", None])
def test_unknown_name(name):
    with pytest.raises(ValueError, match="'name'") as error:
        build_model(name)
    if isinstance(name, str):
        assert all(model_name in str(error.value) for model_name in MODEL_NAMES)


@pytest.mark.parametrize("argument, value", [("num_classes", 0), ("in_channels", -1), ("image_size", 2.5),
                                             ("num_classes", True)])
def test_bad_sizes(argument, value):
    with pytest.raises(ValueError, match=f"'{argument}'"):
        build_model("cnn", **{argument: value})


@pytest.mark.parametrize("library, model_name", [("torchvision", "resnet18"), ("timm", "resnet18")])
def test_external_library_not_installed(library, model_name):
    if importlib.util.find_spec(library) is not None:
        pytest.skip(f"{library} is installed")
    with pytest.raises(ValueError, match=f"'name'.*{library} is not installed"):
        build_model(f"{library}:{model_name}")


class _Payload:
    """Unpickling this would run code (os.system) if the loader allowed it."""

    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_loading_refuses_a_pickle_that_carries_code(tmp_path):
    from greedyprune.models import read_state_dict
    path = tmp_path / "evil.pt"
    torch.save({"format": 2, "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="could run code"):
        load_model(path)
    with pytest.raises(ValueError, match="could run code"):
        read_state_dict(path)


def test_state_dicts_load_from_checkpoints_with_prefixes_and_mismatches_are_named(tmp_path):
    from greedyprune.models import load_weights_into, read_state_dict
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    state = read_state_dict(path)
    assert set(state) == set(model.state_dict())
    fresh = load_weights_into(build_model("mlp", num_classes=10, in_channels=1, image_size=8), path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match=r"'weights'.*(missing|unexpected|shape)"):
        load_weights_into(build_model("cnn", num_classes=10, in_channels=1, image_size=8), path)


def test_a_pruned_model_exports_and_runs_without_greedyprune_at_any_batch_size(tmp_path):
    from greedyprune.models import export_program
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    graph.get_pruning_group(model.layer2[1].conv1, tp.prune_conv_out_channels, idxs=list(range(9))).prune()
    export_program(model, x[:1], tmp_path / "pruned.pt2")  # exported from one image, run at any batch size
    program = torch.export.load(tmp_path / "pruned.pt2").module()
    for batch in (1, 4, 7):
        images = torch.randn(batch, 3, 32, 32)
        torch.testing.assert_close(program(images), model(images))
    save_model(model, tmp_path / "pruned.pt")
    plain = torch.load(tmp_path / "pruned.pt", weights_only=True)["state_dict"]  # plain PyTorch reads the weights
    assert plain["layer2.1.conv1.weight"].shape[0] == 32 - 9


def test_a_token_model_exports_with_a_dynamic_sequence_length(tmp_path):
    from greedyprune.models import export_program

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = torch.nn.Embedding(11, 6), torch.nn.Linear(6, 11)

        def forward(self, ids):
            return self.head(torch.relu(self.embed(ids)))

    model = Tokens().eval()
    export_program(model, torch.randint(0, 11, (1, 5)), tmp_path / "tokens.pt2")
    program = torch.export.load(tmp_path / "tokens.pt2").module()
    for shape in ((1, 5), (4, 9), (7, 2)):
        ids = torch.randint(0, 11, shape)
        torch.testing.assert_close(program(ids), model(ids))
