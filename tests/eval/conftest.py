"""Fixtures of the evaluation tests: a backbone exported as pretraining exports it."""

from __future__ import annotations

import pytest
import torch

from ctssl.pretrain.backbones import build_backbone
from ctssl.pretrain.checkpoint import export_backbone
from tests.helpers import ExportHolder


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """(backbone.safetensors path, the backbone) of a ResNet-18 exported with a CT card."""
    torch.manual_seed(3)
    backbone, _ = build_backbone("resnet18", 3)
    card = {"backbone": "resnet18", "in_chans": 3, "method": "simclr",
            "data": {"kind": "ct", "windows": ["lung", "soft_tissue", "bone"]}}
    return export_backbone(ExportHolder(backbone), tmp_path_factory.mktemp("export"), card), backbone
