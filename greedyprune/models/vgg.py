"""VGG with batch norm for CIFAR (Simonyan & Zisserman, 2015, Table 1 configurations A and E).

The CIFAR form: the convolutional stacks of the paper, each conv followed by BatchNorm2d and ReLU,
then global average pooling to 512 features and a single Linear(512, num_classes).
"""
from collections import OrderedDict

from torch import nn

# Output widths of the 3x3 convs; "M" is a 2x2 max pool.
VGG_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """CIFAR VGG: `features` (conv3x3 + BN + ReLU stacks with max pools), `avgpool`, `flatten`, `classifier`.

    A max pool is left out when the feature map is already 1x1 (decided from `image_size` at build
    time), so inputs smaller than 32x32 work too.
    """

    def __init__(self, config: str = "vgg11", num_classes: int = 10, in_channels: int = 3,
                 image_size: int = 32):
        super().__init__()
        layers = OrderedDict()
        size, channels, conv_index, pool_index = image_size, in_channels, 0, 0
        for entry in VGG_CONFIGS[config]:
            if entry == "M":
                pool_index += 1
                if size > 1:
                    layers[f"pool{pool_index}"] = nn.MaxPool2d(2)
                    size //= 2
                continue
            conv_index += 1
            layers[f"conv{conv_index}"] = nn.Conv2d(channels, entry, 3, padding=1)
            layers[f"bn{conv_index}"] = nn.BatchNorm2d(entry)
            layers[f"relu{conv_index}"] = nn.ReLU()
            channels = entry
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.avgpool(self.features(x))))
