"""ImageNet ResNets (He et al., 2016, "Deep Residual Learning for Image Recognition", Table 1).

Module names, shapes and parameter counts match torchvision's resnet18/34/50, so their
state_dicts are interchangeable. Each block has its own ReLU modules (relu1, relu2[, relu3]),
none of them in place, so every conv -> BN -> activation chain is visible to tracers.
Bottlenecks stride in the 3x3 conv ("ResNet v1.5", as torchvision does).
"""
from torch import nn


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, BN weight 1 and bias 0; Linear layers keep PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1x1 conv + BN shortcut used where a block changes shape (the paper's option B)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity or projection shortcut (paper Fig. 2 left)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.downsample = (projection_shortcut(in_channels, out_channels, stride)
                           if stride != 1 or in_channels != out_channels else None)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, each with BN, plus a shortcut (paper Fig. 5 right)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu3 = nn.ReLU()
        self.downsample = (projection_shortcut(in_channels, out_channels, stride)
                           if stride != 1 or in_channels != out_channels else None)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.relu3(self.bn3(self.conv3(out)) + shortcut)


def make_stage(block: type, in_channels: int, channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    """`num_blocks` blocks of `channels` width; the first one carries the stride."""
    blocks = [block(in_channels, channels, stride)]
    blocks += [block(channels * block.expansion, channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


# Blocks per stage (paper Table 1).
IMAGENET_RESNETS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 conv stem and 3x3/2 max pool, four stages of widths 64-512, global
    average pooling, Linear. Any input size >= 1 works (the head pools adaptively)."""

    def __init__(self, depth: str = "resnet18", num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        block, stage_sizes = IMAGENET_RESNETS[depth]
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for index, (width, num_blocks) in enumerate(zip((64, 128, 256, 512), stage_sizes), start=1):
            stride = 1 if index == 1 else 2
            setattr(self, f"layer{index}", make_stage(block, channels, width, num_blocks, stride))
            channels = width * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
