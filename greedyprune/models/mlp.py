"""The MLP of the PQ Index paper (Diao et al., 2023, appendix Table 1)."""
from collections import OrderedDict

from torch import nn


class MLP(nn.Sequential):
    """Flatten, Linear(in_channels*image_size^2, 128), ReLU, Linear(128, 256), ReLU, Linear(256, num_classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__(OrderedDict([
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(in_channels * image_size * image_size, 128)),
            ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(128, 256)),
            ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(256, num_classes)),
        ]))
