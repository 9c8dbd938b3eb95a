"""SimCLR (Chen et al. 2020): two views, projection head, NT-Xent over the *global* batch.

Both views go through the network in one forward, as google-research/simclr concatenates them
(``model.py``: the views split from the channel axis and stacked on the batch axis): BatchNorm
statistics are those of the 2B images, synchronised over every process with SyncBN (SimCLR's global
BN), and each BN layer synchronises once per step instead of once per view.

lightly's ``NTXentLoss`` uses negatives from every process only with ``gather_distributed=True`` (its
default is False: per-GPU negatives, as in the RadNet-12M run); ctssl turns it on by default
(``method.simclr.gather_distributed``). The backbone itself is what is exported and evaluated.
"""

from __future__ import annotations

import torch
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from ctssl.pretrain.methods.monitor import collapse_ratio
from ctssl.pretrain.methods.ntxent import NTXent


class SimCLR(nn.Module):
    num_views = 2

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.head = SimCLRProjectionHead(feature_dim, cfg.hidden_dim, cfg.output_dim, num_layers=cfg.num_layers)
        self.criterion = NTXent(temperature=cfg.temperature, gather_distributed=cfg.gather_distributed)

    @property
    def export_backbone(self) -> nn.Module:
        return self.backbone

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Two (B, C, S, S) views -> projections (B, 2, D), both views in one forward."""
        b = views[0].shape[0]
        z = self.head(self.backbone(torch.cat(views)))
        return z.view(len(views), b, -1).transpose(0, 1)

    def targets(self, views: list[torch.Tensor]) -> None:
        return None

    def loss(self, z: torch.Tensor, targets: None = None, epoch: int = 0):
        """z: (B, 2, D) -> NT-Xent between the two views (negatives: every other image of the global batch)."""
        loss = self.criterion(z[:, 0], z[:, 1])
        return loss, {"loss": loss.detach(), "collapse_ratio": collapse_ratio(z[:, 0].detach())}

    def forward(self, views: list[torch.Tensor], epoch: int = 0, part: str = "loss"):
        if part == "embed":
            return self.embed(views)
        return self.loss(self.embed(views), None, epoch)

    def update_teacher(self, momentum: float) -> None:
        pass
