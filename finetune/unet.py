"""A 2-D U-Net on the encoder of any backbone ctssl evaluates (segmentation transfer).

``build_unet(backbone, name, num_classes)`` wraps a backbone as ``pretrain.backbones.build_backbone`` or
``pretrain.sources.load_backbone`` returns it (random init, ImageNet or RadImageNet weights, ctssl SimCLR/DINO
exports; any number of input channels) and maps (B, C, H, W) images to (B, num_classes, H, W) logits, for H
and W multiples of 32. The encoder *is* the backbone (a copy: the caller's module is untouched), so its
state dict has the backbone's keys and can be exported as a backbone again (``export_backbone``).

Encoders, as feature maps keyed by stride, come from the backbone's registry entry (``pretrain.backbones``:
``Architecture.encoder``); besides the two below, a timm CNN's ``forward_intermediates`` maps (those
``features_only=True`` gives, at its ``feature_info`` strides, which must reach 32), timm and Hugging Face ViTs
through the same simple pyramid (a patch other than 16 resized to stride 16) and Hugging Face ConvNeXt's stage
outputs (``pretrain.external``); an architecture without multi-scale features is refused in one line.

- ResNet-18/50 (torchvision): the stem's ReLU (stride 2, before the max-pool) and every stage, layer1..layer4
  (strides 4, 8, 16, 32); layer4 is the bottleneck. The RadNet-12M study's U-Net took its skips from relu and
  layer1-3 of a ResNet-50 the same way.
- ViT-S/16 (timm): ViTDet's simple feature pyramid (Li, Mao, Girshick, He, "Exploring Plain Vision
  Transformer Backbones for Object Detection", ECCV 2022, arXiv 2203.16527) fed, as DPT and UNETR do, from
  four evenly spaced blocks (3, 6, 9, 12 of 12) rather than the last block only: their tokens (after the
  final LayerNorm), reshaped to stride-16 maps, go to stride 4 (two 2x2 transposed convolutions with a
  LayerNorm and GELU between), 8 (one), 16 (as they are) and 32 (2x2 max-pool). A frozen ViT's last block
  alone carries little spatial detail; the intermediate blocks give the decoder the multi-level input a
  ResNet's stages give it. There is no stride-2 skip. The pyramid's layers are new: they belong to the
  decoder and train in both arms.

Decoder: our own, short (``UpBlock``): per level a 2x2 transposed convolution (stride 2), concatenation with
the skip at that stride, then two 3x3 convolution-BatchNorm-ReLU blocks, with 256-128-64-32-16 filters from
stride 32 up to full resolution, then a 1x1 convolution to the class logits: the RadNet-12M study's decoder
(filters 256-128-64-32-16, transposed convolutions). Why not segmentation_models_pytorch's ``UnetDecoder``
(0.6.0 checked): it upsamples by interpolation only (``interpolation_mode``), so the study's transposed
convolutions cannot be reproduced with it; it is an internal module
(``segmentation_models_pytorch.decoders.unet.decoder``) whose constructor changed between releases
(``use_batchnorm`` became ``use_norm``, ``center`` became ``add_center_block``) and which expects smp's own
encoder convention (an identity stage first); and it would add a dependency (huggingface-hub among others)
for about forty lines. MONAI's 2-D networks (``FlexibleUNet``) build their own encoders rather than take
ours.

Freezing (the study's "linear" arm, decoder trained on a frozen encoder): ``model.freeze_encoder()`` turns
off the encoder's gradients, runs it without autograd and keeps it in eval mode whatever ``model.train()``
says, so BatchNorm running statistics and dropout/stochastic depth stay as pretrained.
``encoder_parameters`` and ``decoder_parameters`` split the parameters for an optimiser.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ctssl.pretrain.backbones import architecture_of
from ctssl.pretrain.encoders import ResNetEncoder, SimplePyramid, ViTEncoder  # noqa: F401  (the encoders, named here)

DECODER_CHANNELS = (256, 128, 64, 32, 16)   # the RadNet-12M study's decoder filters, stride 16 -> 1
DECODER_STRIDES = (16, 8, 4, 2, 1)          # each decoder level's output stride
MULTIPLE = 32                                # input sides must be multiples of the deepest stride


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UpBlock(nn.Module):
    """x2 up (2x2 transposed convolution to ``cout``), concatenation with the skip (``skip`` channels, 0 for
    none), two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.convs = nn.Sequential(_conv_bn_relu(cout + skip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        return self.convs(x if skip is None else torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """From the stride-32 map up to full resolution, one ``UpBlock`` per level (``DECODER_STRIDES``), each
    taking the encoder's map at its output stride as skip when there is one. ``channels``: ``{stride: C}``
    of the encoder's maps."""

    def __init__(self, channels: dict[int, int], filters=DECODER_CHANNELS):
        super().__init__()
        cin, blocks = channels[32], []
        for cout, stride in zip(filters, DECODER_STRIDES):
            blocks.append(UpBlock(cin, channels.get(stride, 0), cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.skip_strides = [s if s in channels else None for s in DECODER_STRIDES]

    def forward(self, maps: dict[int, torch.Tensor]) -> torch.Tensor:
        x = maps[32]
        for block, stride in zip(self.blocks, self.skip_strides):
            x = block(x, None if stride is None else maps[stride])
        return x


class UNet(nn.Module):
    """encoder -> neck (ViT: ``SimplePyramid``; ResNet: nothing) -> decoder -> 1x1 head; see the module
    docstring. ``in_chans``: the channels the encoder takes."""

    def __init__(self, encoder: nn.Module, neck: nn.Module, decoder: UNetDecoder, head: nn.Module, name: str,
                 in_chans: int):
        super().__init__()
        self.encoder, self.neck, self.decoder, self.head = encoder, neck, decoder, head
        self.backbone_name, self.in_chans = name, in_chans
        self.encoder_frozen = False

    @property
    def export_backbone(self) -> nn.Module:
        """The (fine-tuned) backbone, with the keys of the one it was built from."""
        return self.encoder.backbone

    def freeze_encoder(self, frozen: bool = True) -> "UNet":
        """Freeze (or unfreeze) the encoder: no gradients, no autograd graph, and eval mode (BatchNorm
        statistics and dropout as pretrained) even while the model trains."""
        self.encoder_frozen = frozen
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "UNet":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_classes, H, W) logits; H and W multiples of 32."""
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[-2] % MULTIPLE or x.shape[-1] % MULTIPLE:
            raise ValueError(f"UNet input must be (B, {self.in_chans}, H, W) with H and W multiples of {MULTIPLE}, "
                             f"got {tuple(x.shape)}; pad or resize the slices.")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            features = self.encoder(x)
        return self.head(self.decoder(self.neck(features)))


def _encoder_channels(encoder: nn.Module, neck: nn.Module, in_chans: int) -> dict[int, int]:
    """``{stride: channels}`` of the neck's output, from one small forward in eval mode (no statistics
    change)."""
    modes = {m: m.training for m in (encoder, neck)}
    encoder.eval()
    neck.eval()
    with torch.no_grad():
        maps = neck(encoder(torch.zeros(1, in_chans, 2 * MULTIPLE, 2 * MULTIPLE)))
    for module, mode in modes.items():
        module.train(mode)
    return {stride: int(m.shape[1]) for stride, m in maps.items()}


def build_unet(backbone: nn.Module, name: str, num_classes: int, filters=DECODER_CHANNELS) -> UNet:
    """A U-Net (module docstring) on a copy of ``backbone`` (a ``build_backbone`` module named ``name``),
    with ``num_classes`` output logits per pixel (background included) and decoder ``filters`` per level
    from stride 16 to 1. The encoder and neck are the architecture's (``pretrain.backbones``: its
    ``encoder``), which refuses in one line when it has no multi-scale features."""
    arch = architecture_of(backbone)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background and at least one class), got {num_classes!r}.")
    if len(filters) != len(DECODER_STRIDES):
        raise ValueError(f"filters must give {len(DECODER_STRIDES)} decoder widths (strides {DECODER_STRIDES}), "
                         f"got {list(filters)}.")
    backbone = copy.deepcopy(backbone)
    encoder, neck = arch.encoder(backbone)
    in_chans = arch.in_chans(backbone)
    channels = _encoder_channels(encoder, neck, in_chans)
    if 32 not in channels:
        raise ValueError(f"Backbone '{name}' gives feature maps at strides {sorted(channels)}; the U-Net needs one at "
                         "stride 32.")
    decoder = UNetDecoder(channels, filters)
    return UNet(encoder, neck, decoder, nn.Conv2d(filters[-1], num_classes, 1), name, in_chans)


def encoder_parameters(model: UNet) -> list[nn.Parameter]:
    """The encoder's (the backbone's) parameters."""
    return list(model.encoder.parameters())


def decoder_parameters(model: UNet) -> list[nn.Parameter]:
    """Every parameter that is not the encoder's: the ViT pyramid, the decoder and the head (all new)."""
    encoder = {id(p) for p in model.encoder.parameters()}
    return [p for p in model.parameters() if id(p) not in encoder]
