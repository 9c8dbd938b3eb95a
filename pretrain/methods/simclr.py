"""SimCLR (Chen et al. 2020): two views, projection head, NT-Xent over the *global* batch.

lightly's ``NTXentLoss`` uses negatives from every process only with
``gather_distributed=True`` (its default is False: per-GPU negatives, as in the RadNet-12M run);
ctssl turns it on by default (``method.simclr.gather_distributed``). The backbone itself is what is
exported and evaluated.
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from ctssl.pretrain.methods.monitor import collapse_ratio


class SimCLR(nn.Module):
    num_views = 2

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.head = SimCLRProjectionHead(feature_dim, cfg.hidden_dim, cfg.output_dim, num_layers=cfg.num_layers)
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=cfg.gather_distributed)

    @property
    def export_backbone(self) -> nn.Module:
        return self.backbone

    def forward(self, views: list[torch.Tensor], epoch: int = 0):
        z0 = self.head(self.backbone(views[0]))
        z1 = self.head(self.backbone(views[1]))
        loss = self.criterion(z0, z1)
        return loss, {"loss": loss.detach(), "collapse_ratio": collapse_ratio(z0.detach())}

    def update_teacher(self, momentum: float) -> None:
        pass
