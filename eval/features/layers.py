"""Layer activations of a backbone at the taps its registry entry names (``pretrain.backbones``: the stem's
output and each stage's of a ResNet, optionally the first convolution's, as the "revisiting hidden
representations" study compares at ``conv1``; the patch embedding and four evenly spaced blocks of a ViT; a
timm CNN's ``feature_info`` stages; a Hugging Face model's embeddings and layers or stages), collected with
forward hooks; ``spatial_activations`` samples the
same spatial positions of two networks of one architecture (that study's CCA datapoints); ``conv_weights``
the convolution weights, filter by filter."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ctssl.pretrain.backbones import architecture_of


def layer_modules(model: nn.Module, conv1: bool = False) -> dict[str, nn.Module]:
    """Named modules whose outputs are compared (the architecture's ``taps``); ``conv1``: a ResNet's first
    convolution instead of the stem."""
    return architecture_of(model).taps(model, conv1)


def _tensor(out) -> torch.Tensor:
    """A module's output tensor (Hugging Face layers may return a tuple whose first entry is it)."""
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.inference_mode()
def collect(model: nn.Module, inputs: torch.Tensor, reduce, batch: int = 32, device: str = "cpu") -> dict[str, np.ndarray]:
    """{layer: reduce(activations (N, ...))} for ``inputs`` (N, C, H, W)."""
    model = model.to(device).eval()
    modules = layer_modules(model)
    store: dict[str, list] = {name: [] for name in modules}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: store[name].append(_tensor(out).float().cpu()))
               for name, m in modules.items()]
    try:
        for start in range(0, len(inputs), batch):
            model(inputs[start:start + batch].to(device))
    finally:
        for h in handles:
            h.remove()
    return {name: reduce(torch.cat(parts).numpy()) for name, parts in store.items()}


def spatial_activations(model: torch.nn.Module, x: torch.Tensor, positions: int, seed: int = 0,
                        batch: int = 32, device: str = "cpu") -> dict[str, np.ndarray]:
    """{layer: (P, C)} activations at about ``positions`` spatial positions (tokens for a ViT) of the
    images ``x``: the same number from each image, drawn by a generator seeded from (seed, layer, image),
    so two networks of one architecture on the same images are sampled at the same positions."""
    model = model.to(device).eval()
    modules = layer_modules(model, conv1=True)
    per_image = max(1, -(-positions // max(1, len(x))))
    store: dict[str, list[np.ndarray]] = {name: [] for name in modules}
    offset = [0]

    def hook(name, layer_index):
        def fn(_module, _inputs, out):
            a = _tensor(out).float().cpu()
            a = a.flatten(2).transpose(1, 2) if a.ndim == 4 else a    # (B, positions, C)
            for i in range(a.shape[0]):
                rng = np.random.default_rng((seed, layer_index, offset[0] + i))
                count = a.shape[1]
                picks = np.sort(rng.choice(count, min(per_image, count), replace=False))
                store[name].append(a[i, picks].numpy())
        return fn

    handles = [m.register_forward_hook(hook(name, j)) for j, (name, m) in enumerate(modules.items())]
    try:
        with torch.inference_mode():
            for start in range(0, len(x), batch):
                model(x[start:start + batch].float().to(device))
                offset[0] += len(x[start:start + batch])
    finally:
        for h in handles:
            h.remove()
    return {name: np.concatenate(parts).astype(np.float64) for name, parts in store.items()}


def conv_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """{name: (out channels, in x k x k)} float64 weights of every convolution, from the input on; each filter is
    one row (one example for a similarity of weights, ``eval.measures.similarity.weight_similarity``)."""
    return {name: m.weight.detach().flatten(1).double().cpu().numpy()
            for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
