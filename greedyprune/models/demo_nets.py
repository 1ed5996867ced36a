"""The small networks of the demos: SR-popup's digits CNN and the two-layer regression net of
the greedy paper's Figure 1."""
from collections import OrderedDict

from torch import nn

SMALL_CNN_WIDTHS = (16, 32, 64)


def small_cnn(num_classes: int = 10, in_channels: int = 1, widths=SMALL_CNN_WIDTHS) -> nn.Sequential:
    """Conv3x3 (no bias) + BN + ReLU blocks of `widths` channels, max pools after the second and
    later ones (8x8 -> 4x4 -> 2x2), global average pool, Linear classifier (23k conv weights)."""
    blocks = OrderedDict()
    channels = in_channels
    for index, width in enumerate(widths, start=1):
        block = OrderedDict(conv=nn.Conv2d(channels, width, 3, padding=1, bias=False), bn=nn.BatchNorm2d(width),
                            relu=nn.ReLU())
        if index > 1:
            block["pool"] = nn.MaxPool2d(2)
        blocks[f"block{index}"] = nn.Sequential(block)
        channels = width
    blocks["avgpool"] = nn.AdaptiveAvgPool2d(1)
    blocks["flatten"] = nn.Flatten()
    blocks["fc"] = nn.Linear(channels, num_classes)
    return nn.Sequential(blocks)


def two_layer_net(inputs: int, first: int, hidden: int = 100) -> nn.Sequential:
    """inputs -> first -> hidden -> 1 with ReLUs: the first layer's `first` neurons are what
    Figure 1 prunes (or trains from scratch at that width)."""
    return nn.Sequential(nn.Linear(inputs, first), nn.ReLU(), nn.Linear(first, hidden), nn.ReLU(), nn.Linear(hidden, 1))
