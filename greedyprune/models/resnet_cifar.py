"""CIFAR ResNets (He et al., 2016, section 4.2): 6n+2 layers, three stages of 16/32/64 channels.

Shortcuts are identities except where a block changes shape, where a 1x1 conv + BN projection is
used (the paper's option B; the paper's CIFAR numbers use option A, zero-padding identities,
which adds no parameters). resnet20/32/56 have n = 3/5/9.
"""
from torch import nn

from .resnet import BasicBlock, kaiming_init, make_stage

CIFAR_RESNET_BLOCKS = {"resnet20": 3, "resnet32": 5, "resnet56": 9}


class CifarResNet(nn.Module):
    """3x3 conv (16) + BN + ReLU, three stages of BasicBlocks (16, 32, 64 channels; stride 2 into
    stages 2 and 3), global average pooling, Linear(64, num_classes)."""

    def __init__(self, depth: str = "resnet20", num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        num_blocks = CIFAR_RESNET_BLOCKS[depth]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = make_stage(BasicBlock, 16, 16, num_blocks, stride=1)
        self.layer2 = make_stage(BasicBlock, 16, 32, num_blocks, stride=2)
        self.layer3 = make_stage(BasicBlock, 32, 64, num_blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        kaiming_init(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))
