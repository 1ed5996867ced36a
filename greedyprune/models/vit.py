"""A small Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words"), at the
size of DeiT-Tiny (Touvron et al., 2021): width 192, 12 blocks, 3 heads, MLP ratio 4.

Patches of 16 pixels from 128-pixel images up (224 -> 14x14 tokens), else of 4 (32 -> 8x8).
Module names and shapes follow timm's VisionTransformer (patch_embed.proj, cls_token, pos_embed,
blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head), so a timm
`deit_tiny_patch16_224` state dict loads at 224. Each block's MLP (fc1 -> GELU -> fc2) is a
prunable unit of (batch, tokens, channels) activations; the width channels are tied to the
residual stream.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import arg_error

WIDTH, DEPTH, HEADS, MLP_RATIO = 192, 12, 3, 4


def patch_size_for(image_size: int) -> int:
    return 16 if image_size >= 128 else 4


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, width: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, tokens, width]


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        # shapes read one by one: torch.fx cannot unpack a traced x.shape
        b, t = x.shape[0], x.shape[1]
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, width * mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, *, width: int = WIDTH,
                 depth: int = DEPTH, heads: int = HEADS, mlp_ratio: int = MLP_RATIO):
        super().__init__()
        patch = patch_size_for(image_size)
        if image_size % patch:
            raise arg_error("image_size", f"must be a multiple of the ViT's patch size {patch}, got {image_size}")
        tokens = (image_size // patch) ** 2
        self.patch_embed = PatchEmbed(in_channels, width, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, width) * 0.02)
        self.blocks = nn.Sequential(*(Block(width, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
