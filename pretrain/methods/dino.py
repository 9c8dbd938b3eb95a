"""DINO (Caron et al. 2021): student and EMA teacher, centring, teacher temperature schedule,
multi-crop (2 global + N local views; the teacher sees only the global ones).

As in facebookresearch/dino, the **teacher** is what DINO evaluates and releases: ``export_backbone``
is the teacher's backbone (the student stays in the checkpoint). lightly's ``DINOLoss`` all-reduces
its centre whenever torch.distributed is initialised, so every process must call it the same number
of times: the loader gives every rank the same number of batches.
"""

from __future__ import annotations

import copy

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from ctssl.pretrain.methods.monitor import collapse_ratio


class DINO(nn.Module):
    num_views = None  # 2 global + cfg.local_crops

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.head = DINOProjectionHead(feature_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim,
                                       freeze_last_layer=cfg.freeze_last_layer_epochs,
                                       norm_last_layer=cfg.norm_last_layer)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(feature_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim,
                                               norm_last_layer=cfg.norm_last_layer)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=cfg.output_dim, warmup_teacher_temp=cfg.warmup_teacher_temp,
                                  teacher_temp=cfg.teacher_temp,
                                  warmup_teacher_temp_epochs=cfg.warmup_teacher_temp_epochs,
                                  student_temp=cfg.student_temp, center_momentum=cfg.center_momentum)

    @property
    def export_backbone(self) -> nn.Module:
        return self.teacher_backbone

    def forward(self, views: list[torch.Tensor], epoch: int = 0):
        with torch.no_grad():
            teacher_features = [self.teacher_backbone(v) for v in views[:2]]
            teacher_out = [self.teacher_head(f) for f in teacher_features]
        features = [self.backbone(v) for v in views]
        student_out = [self.head(f) for f in features]
        loss = self.criterion(teacher_out, student_out, epoch=epoch)
        # Collapse is watched on the teacher's head bottleneck (the bottleneck_dim-d vector that is
        # L2-normalised before the prototype layer; the prototype scores are peaked by design).
        with torch.no_grad():
            bottleneck = self.teacher_head.layers(teacher_features[0])
        return loss, {"loss": loss.detach(), "collapse_ratio": collapse_ratio(bottleneck)}

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher = momentum * teacher + (1 - momentum) * student (backbone and head)."""
        update_momentum(self.backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.head, self.teacher_head, m=momentum)

    def after_backward(self, epoch: int) -> None:
        self.head.cancel_last_layer_gradients(current_epoch=epoch)
