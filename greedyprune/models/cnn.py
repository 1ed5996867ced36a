"""The CNN of the PQ Index paper (Diao et al., 2023, appendix Table 2)."""
from collections import OrderedDict

from torch import nn

CNN_WIDTHS = (64, 128, 256, 512)


class CNN(nn.Sequential):
    """Four blocks of Conv2d(3x3, pad 1) + BatchNorm2d + ReLU + MaxPool2d(2) with widths 64, 128, 256, 512,
    then global average pooling and Linear(512, num_classes).

    A block's max pool is left out when the feature map is already 1x1 (decided from `image_size`
    at build time), so 8x8 inputs (scikit-learn digits) go 8 -> 4 -> 2 -> 1 -> 1.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        layers = OrderedDict()
        size, channels = image_size, in_channels
        for index, width in enumerate(CNN_WIDTHS, start=1):
            block = OrderedDict([
                ("conv", nn.Conv2d(channels, width, 3, 1, 1)),
                ("bn", nn.BatchNorm2d(width)),
                ("relu", nn.ReLU()),
            ])
            if size > 1:
                block["pool"] = nn.MaxPool2d(2)
                size //= 2
            layers[f"block{index}"] = nn.Sequential(block)
            channels = width
        layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(channels, num_classes)
        super().__init__(layers)
