"""Collapse: when every embedding becomes the same vector, self-supervised training has failed.

``collapse_ratio(z)`` is the standard deviation of the L2-normalised embeddings (per dimension,
averaged; lightly's ``std_of_l2_normalized``) times ``sqrt(d)`` for ``d`` = the embeddings' own
dimension: about 1 for embeddings spread over the sphere, 0 when they collapse (the SimSiam paper's
diagnostic, Chen & He 2021). The training loop warns when it falls below ``monitor.collapse_std``.
"""

from __future__ import annotations

import math

import torch
from lightly.utils.debug import std_of_l2_normalized


def collapse_ratio(z: torch.Tensor) -> torch.Tensor:
    """(B, d) embeddings -> a scalar tensor: std of the L2-normalised rows x sqrt(d)."""
    return std_of_l2_normalized(z.float()) * math.sqrt(z.shape[1])
