"""Self-supervised methods. Each is one module defining an ``nn.Module`` with

- ``forward(views: list[Tensor], epoch: int) -> (loss, logs)``: the loss and scalar logs;
- ``update_teacher(momentum)`` (no-op for methods without a teacher), called by the loop;
- ``after_backward(epoch)`` (optional gradient surgery, e.g. DINO's frozen last layer);
- ``backbone``: the module that is exported and evaluated.

Adding a method is one new module registered in ``METHODS``.
"""

from __future__ import annotations

from ctssl.pretrain.methods.dino import DINO
from ctssl.pretrain.methods.simclr import SimCLR

METHODS = {"simclr": SimCLR, "dino": DINO}


def build_method(name: str, backbone, feature_dim: int, cfg):
    if name not in METHODS:
        raise ValueError(f"Unknown method '{name}'. Valid methods are {sorted(METHODS)}.")
    return METHODS[name](backbone, feature_dim, getattr(cfg, name))
