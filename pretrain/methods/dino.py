"""DINO (Caron et al. 2021) as facebookresearch/dino's ``main_dino.py``: student and EMA teacher,
centring, teacher temperature schedule, multi-crop (2 global + N local views; the teacher sees only the
global ones).

Point by point with main_dino.py (docs/pretraining.md lists every departure):

- the **teacher** is what DINO evaluates and releases: ``export_backbone`` is the teacher's backbone (the
  student stays in the checkpoint);
- the teacher is built **without stochastic depth** (main_dino builds it with ``drop_path_rate`` 0): the
  student's ``DropPath`` layers are identities in the teacher, so two teacher passes over one input agree;
- ``MultiCropWrapper``: crops of one resolution are concatenated and go through the backbone in **one
  forward** (the two global crops, then the local crops), the head runs once on all features; a ResNet's
  BatchNorm therefore sees each resolution group as one batch, as in the reference;
- lightly's ``DINOLoss`` is the reference loss (cross-entropy of every teacher view with every other
  student view, centring, teacher temperature warm-up) and all-reduces its centre whenever
  torch.distributed is initialised, so every process must call it the same number of times: the loader
  gives every rank the same number of batches.
"""

from __future__ import annotations

import copy

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from ctssl.pretrain.methods.monitor import collapse_ratio


def without_drop_path(module: nn.Module) -> nn.Module:
    """``module`` with every stochastic-depth layer (timm's ``DropPath``) replaced by an identity."""
    for name, child in module.named_children():
        if type(child).__name__ == "DropPath":
            setattr(module, name, nn.Identity())
        else:
            without_drop_path(child)
    return module


def resolution_groups(views: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive views with the same size (main_dino's ``idx_crops``)."""
    groups, start = [], 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape[-2:] != views[start].shape[-2:]:
            groups.append((start, i))
            start = i
    return groups


class DINO(nn.Module):
    num_views = None  # 2 global + cfg.local_crops

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.head = DINOProjectionHead(feature_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim,
                                       freeze_last_layer=cfg.freeze_last_layer_epochs,
                                       norm_last_layer=cfg.norm_last_layer)
        self.teacher_backbone = without_drop_path(copy.deepcopy(backbone))
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

    @staticmethod
    def _multicrop(backbone: nn.Module, head: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """main_dino's MultiCropWrapper: one backbone forward per resolution group, one head forward;
        -> (B, V, D)."""
        b = views[0].shape[0]
        features = torch.cat([backbone(torch.cat(views[start:stop])) for start, stop in resolution_groups(views)])
        return head(features).view(len(views), b, -1).transpose(0, 1)

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """The student's head outputs of every view, (B, V, D)."""
        return self._multicrop(self.backbone, self.head, views)

    @torch.no_grad()
    def targets(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's head outputs of the two global views, (B, 2, D), and its head bottleneck of the
        first global view (B, bottleneck_dim), which the collapse figure watches (the prototype scores are
        peaked by design; the L2-normalised bottleneck is not)."""
        b = views[0].shape[0]
        features = self.teacher_backbone(torch.cat(views[:2]))
        out = self.teacher_head(features).view(2, b, -1).transpose(0, 1)
        return out, self.teacher_head.layers(features[:b])

    def loss(self, student: torch.Tensor, targets, epoch: int = 0):
        teacher, bottleneck = targets
        # The loss (softmaxes, centre) in fp32 whatever the autocast around it, as main_dino.py's DINOLoss.
        with torch.autocast(student.device.type, enabled=False):
            loss = self.criterion(list(teacher.float().unbind(1)), list(student.float().unbind(1)), epoch=epoch)
        return loss, {"loss": loss.detach(), "collapse_ratio": collapse_ratio(bottleneck)}

    def forward(self, views: list[torch.Tensor], epoch: int = 0, part: str = "loss"):
        if part == "embed":
            return self.embed(views)
        return self.loss(self.embed(views), self.targets(views), epoch)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher = momentum * teacher + (1 - momentum) * student (backbone and head)."""
        update_momentum(self.backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.head, self.teacher_head, m=momentum)

    def after_backward(self, epoch: int) -> None:
        self.head.cancel_last_layer_gradients(current_epoch=epoch)
