"""Layer activations of a backbone: the stem's output and each stage's (ResNet; optionally the first
convolution's, as the "revisiting hidden representations" study compares at ``conv1``), or the patch
embedding and evenly spaced blocks (ViT), collected with forward hooks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def layer_modules(model: nn.Module, conv1: bool = False) -> dict[str, nn.Module]:
    """Named modules whose outputs are compared; ``conv1``: a ResNet's first convolution instead of the stem."""
    if hasattr(model, "layer1"):
        first = {"conv1": model.conv1} if conv1 else {"stem": model.maxpool}
        return {**first, "layer1": model.layer1, "layer2": model.layer2,
                "layer3": model.layer3, "layer4": model.layer4}
    if hasattr(model, "blocks"):
        depth = len(model.blocks)
        picks = sorted({max(0, round(depth * f) - 1) for f in (0.25, 0.5, 0.75, 1.0)})
        return {"patch_embed": model.patch_embed, **{f"block{i + 1}": model.blocks[i] for i in picks}}
    raise ValueError(f"No known layers in {type(model).__name__} (ResNet or ViT expected).")


@torch.inference_mode()
def collect(model: nn.Module, inputs: torch.Tensor, reduce, batch: int = 32, device: str = "cpu") -> dict[str, np.ndarray]:
    """{layer: reduce(activations (N, ...))} for ``inputs`` (N, C, H, W)."""
    model = model.to(device).eval()
    modules = layer_modules(model)
    store: dict[str, list] = {name: [] for name in modules}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: store[name].append(out.float().cpu()))
               for name, m in modules.items()]
    try:
        for start in range(0, len(inputs), batch):
            model(inputs[start:start + batch].to(device))
    finally:
        for h in handles:
            h.remove()
    return {name: reduce(torch.cat(parts).numpy()) for name, parts in store.items()}
