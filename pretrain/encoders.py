"""Feature maps of a backbone for a U-Net, as the registry's entries give them (``Architecture.encoder``):
a torchvision ResNet's stages keyed by stride, a timm ViT's four evenly spaced blocks as stride-16 maps, and
ViTDet's simple feature pyramid that turns those into strides 4-32 (``finetune.unet`` documents the choice)."""

from __future__ import annotations

import torch
from torch import nn


class ResNetEncoder(nn.Module):
    """A torchvision ResNet's maps ``{2: relu, 4: layer1, 8: layer2, 16: layer3, 32: layer4}``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        b = self.backbone
        stem = b.relu(b.bn1(b.conv1(x)))
        c4 = b.layer1(b.maxpool(stem))
        c8 = b.layer2(c4)
        c16 = b.layer3(c8)
        return {2: stem, 4: c4, 8: c8, 16: c16, 32: b.layer4(c16)}


class ViTEncoder(nn.Module):
    """A timm ViT's tokens after four evenly spaced blocks (final LayerNorm applied), as (B, D, H/16, W/16)
    maps in block order."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        if not hasattr(backbone, "forward_intermediates"):
            raise ValueError(f"The ViT encoder needs timm's VisionTransformer.forward_intermediates, which "
                             f"{type(backbone).__name__} lacks; upgrade timm.")
        self.backbone = backbone
        depth = len(backbone.blocks)
        self.indices = sorted({depth * (k + 1) // 4 - 1 for k in range(4)})
        if len(self.indices) != 4:
            raise ValueError(f"The ViT pyramid takes 4 evenly spaced blocks; this ViT has only {depth} blocks.")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.backbone.forward_intermediates(x, indices=self.indices, norm=True, output_fmt="NCHW",
                                                   intermediates_only=True)
        size = (x.shape[-2] // 16, x.shape[-1] // 16)    # a patch other than 16 (DINOv2's 14): resized to stride 16
        return [m if tuple(m.shape[-2:]) == size else
                nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]


class SimplePyramid(nn.Module):
    """ViTDet's simple pyramid on four stride-16 maps of ``dim`` channels (one per block, shallow to deep):
    ``{4: (dim/4), 8: (dim/2), 16: (dim), 32: (dim)}`` channels at strides 4, 8, 16, 32."""

    def __init__(self, dim: int):
        super().__init__()
        from timm.layers import LayerNorm2d

        self.to4 = nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2), nn.GELU(),
                                 nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2))
        self.to8 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.to32 = nn.MaxPool2d(2)

    def forward(self, maps: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        return {4: self.to4(maps[0]), 8: self.to8(maps[1]), 16: maps[2], 32: self.to32(maps[3])}
