"""Self-supervised methods. Each is one module defining an ``nn.Module`` with

- ``embed(views) -> (B, V, D)``: the trained network's per-sample outputs for every view (what the loss
  sees; SimCLR: the projections, DINO: the student's head outputs), views of one resolution in one
  forward;
- ``targets(views)``: what the loss compares them with, computed without gradient (DINO: the teacher's
  outputs of the global views, batch-first), or ``None``;
- ``loss(embeddings, targets, epoch) -> (loss, logs)``: the loss of a whole batch from those, with
  scalar logs (a tensor each, read by the loop only at logging steps);
- ``forward(views, epoch, part="loss")``: ``loss(embed(views), targets(views), epoch)``, or with
  ``part="embed"`` only ``embed(views)`` (the loop calls the model through DDP this way when it splits a
  batch into micro-batches: pretrain.step);
- ``update_teacher(momentum)`` (no-op for methods without a teacher) and ``after_backward(epoch)``
  (optional gradient surgery, e.g. DINO's frozen last layer), called by the loop;
- ``export_backbone``: the module that is exported and evaluated.

Because a batch's loss is a function of per-sample embeddings, the loop can compute it for a batch that
does not fit in memory (representation caching, pretrain.step). Adding a method is one new module
registered in ``METHODS``.
"""

from __future__ import annotations

from ctssl.pretrain.methods.dino import DINO
from ctssl.pretrain.methods.simclr import SimCLR

METHODS = {"simclr": SimCLR, "dino": DINO}


def build_method(name: str, backbone, feature_dim: int, cfg):
    if name not in METHODS:
        raise ValueError(f"Unknown method '{name}'. Valid methods are {sorted(METHODS)}.")
    return METHODS[name](backbone, feature_dim, getattr(cfg, name))
