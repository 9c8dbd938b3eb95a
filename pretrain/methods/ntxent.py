"""NT-Xent, the SimCLR loss (Chen et al. 2020, eq. 1), as google-research/simclr computes it
(``objective.py: add_contrastive_loss``): for every image, the cross-entropy of its other view against
every other image of the *global* batch (both views, from every process), summed over the two
directions, each the mean over the batch.

Two departures from lightly's ``NTXentLoss``, on purpose:

- scale: google-research/simclr's loss is ``loss_a + loss_b`` (two means); lightly's is their mean (half of
  it). LARS adapts each weight's step to its gradient norm, so the scale reaches only the group without
  adaptation (biases and norms), whose step it halves; ctssl keeps the reference's loss.
- no host synchronisation: lightly drops each image's similarity with itself by boolean indexing
  (``logits[~mask]``: a shape that depends on data, so a device-to-host copy, two per step); here those
  logits are masked with -inf, which gives the same cross-entropy (tested against lightly's).

The gather keeps the gradient of the other processes' loss terms (lightly's ``GatherLayer``): each process's
gradient is that of the global loss with respect to its own embeddings, as one process on the whole batch
(tested on two gloo processes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils import dist as lightly_dist
from torch import nn


class NTXent(nn.Module):
    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """z0, z1: (B, D) projections of the two views of the same B images -> the scalar loss, in fp32."""
        # In fp32 whatever the autocast around it: bf16 logits at T = 0.1 put about 1% error into the gradient
        # (GradCache and main_dino likewise keep the loss in fp32).
        with torch.autocast(z0.device.type, enabled=False):
            return self._loss(z0.float(), z1.float())

    def _loss(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        b = z0.shape[0]
        z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
        if self.gather_distributed and lightly_dist.world_size() > 1:
            all0, all1 = torch.cat(lightly_dist.gather(z0)), torch.cat(lightly_dist.gather(z1))
            offset = lightly_dist.rank() * b
        else:
            all0, all1, offset = z0, z1, 0
        positives = torch.arange(b, device=z0.device) + offset          # each row's other view, in all1 / all0
        itself = torch.arange(all0.shape[0], device=z0.device)[None, :] == positives[:, None]
        t = self.temperature
        # b = this process's images, n = the global batch; [other view | same view, itself masked]
        logits0 = torch.cat([z0 @ all1.T / t, (z0 @ all0.T / t).masked_fill(itself, float("-inf"))], dim=1)
        logits1 = torch.cat([z1 @ all0.T / t, (z1 @ all1.T / t).masked_fill(itself, float("-inf"))], dim=1)
        return F.cross_entropy(logits0, positives) + F.cross_entropy(logits1, positives)
