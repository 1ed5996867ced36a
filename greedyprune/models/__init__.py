"""Model zoo: the PQ Index paper's MLP and CNN, CIFAR VGG and ResNets, ImageNet ResNets,
MobileNetV2 and a small ViT (DeiT-Tiny size), plus models from torchvision/timm when installed; `save_model`/`load_model` for
(possibly pruned) models as data (models/io.py).

Every zoo model traces with torch.fx.symbolic_trace and builds a torch-pruning DependencyGraph;
each hidden-channel Conv2d/Linear of the CNNs is followed by its own BN and activation modules
(not in place); the ViT's MLPs have their own GELU modules.
"""
import importlib.util

from torch import nn

from ..checks import ArgumentError, check_int

from .cnn import CNN
from .io import export_onnx, export_program, load_model, load_pruned, load_weights, load_weights_into, read_state_dict, save_model
from .mlp import MLP
from .mobilenet_v2 import MobileNetV2
from .resnet import IMAGENET_RESNETS, ResNet
from .resnet_cifar import CIFAR_RESNET_BLOCKS, CifarResNet
from .vgg import VGG_CONFIGS, VGG
from .vit import ViT

MODEL_NAMES = ("mlp", "cnn", *VGG_CONFIGS, *CIFAR_RESNET_BLOCKS, *IMAGENET_RESNETS, "mobilenet_v2", "vit_tiny")
EXTERNAL_LIBRARIES = ("torchvision", "timm")


def _build_external(library: str, model_name: str, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision.models.get_model or timm.create_model with `num_classes` (image_size is not used)."""
    if importlib.util.find_spec(library) is None:
        raise ArgumentError(f"greedyprune: argument 'name' asks for '{library}:{model_name}', "
                         f"but {library} is not installed (pip install {library})")
    if library == "timm":
        import timm
        return timm.create_model(model_name, num_classes=num_classes, in_chans=in_channels)
    if in_channels != 3:
        raise ArgumentError(f"greedyprune: argument 'in_channels' must be 3 for torchvision models, got {in_channels}")
    import torchvision
    return torchvision.models.get_model(model_name, num_classes=num_classes)


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """A freshly initialised model (train mode; deterministic given torch.manual_seed).

    `name` is one of MODEL_NAMES, or "torchvision:<name>" / "timm:<name>" to build from those
    libraries. `image_size` (square inputs) sizes the MLP's first layer and decides which max pools
    the CNN and VGG keep; the other models pool adaptively and take any size.
    """
    num_classes = check_int("num_classes", num_classes, minimum=1)
    in_channels = check_int("in_channels", in_channels, minimum=1)
    image_size = check_int("image_size", image_size, minimum=1)
    if not isinstance(name, str):
        raise ArgumentError(f"greedyprune: argument 'name' must be a str, got {type(name).__name__}")
    model = _build(name, num_classes, in_channels, image_size)
    # what save_model writes, so load_model can rebuild it (also after pruning changed its widths)
    model.greedyprune_arch = dict(name=name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    return model


def _build(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    library, separator, model_name = name.partition(":")
    if separator and library in EXTERNAL_LIBRARIES and model_name:
        return _build_external(library, model_name, num_classes, in_channels)
    if name not in MODEL_NAMES:
        raise ArgumentError(f"greedyprune: unknown argument 'name' {name!r}; expected one of {', '.join(MODEL_NAMES)}, "
                            f"or 'torchvision:<name>' / 'timm:<name>'")
    if name == "mlp":
        return MLP(num_classes, in_channels, image_size)
    if name == "cnn":
        return CNN(num_classes, in_channels, image_size)
    if name in VGG_CONFIGS:
        return VGG(name, num_classes, in_channels, image_size)
    if name in CIFAR_RESNET_BLOCKS:
        return CifarResNet(name, num_classes, in_channels)
    if name in IMAGENET_RESNETS:
        return ResNet(name, num_classes, in_channels)
    if name == "vit_tiny":
        return ViT(num_classes, in_channels, image_size)
    return MobileNetV2(num_classes, in_channels)


__all__ = ["build_model", "MODEL_NAMES", "save_model", "load_model", "load_pruned", "read_state_dict", "load_weights",
           "load_weights_into",
           "export_program", "export_onnx",
           "MLP", "CNN", "VGG", "CifarResNet", "ResNet", "MobileNetV2", "ViT"]
