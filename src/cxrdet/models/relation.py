"""The object-relation module of Relation Networks (Hu et al. 2018) for a box head.

Each RoI attends over the other RoIs of its image: appearance attention (torch's
MultiheadAttention: scaled dot products, `heads` heads of dim / heads channels) plus the
paper's geometric weight, log(max(ReLU(W_G . embedding(relative box geometry)), eps)),
added to every head's attention logits. Written here because torch and torchvision have
no geometric attention term; the attention itself is torch's. Its output projection
starts at zero, so a box head with relations starts as the plain one and the residual
`features + relation` learns what context adds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cxrdet.errors import ConfigError

GEOMETRY_SCALE = 100.0  # the paper's multiplier of the log-ratios before the sinusoids
WAVELENGTH = 1000.0  # the paper's wave length of the sinusoidal embedding
MIN_WEIGHT = 1e-6  # geometric weights are clipped here before the log
MIN_DISTANCE = 1e-3  # relative offsets of coincident centres


def check_relation(dim: int, heads: int, geometry_dim: int, key: str) -> None:
    """ConfigError naming `key`.<field> unless `heads` divides `dim` and `geometry_dim` is a
    positive multiple of 8 (4 geometric features x sin and cos x frequencies)."""
    if heads < 1 or dim % heads:
        raise ConfigError(
            f"{key}.heads: {heads} heads do not divide the box head's {dim} channels "
            "(representation)"
        )
    if geometry_dim < 8 or geometry_dim % 8:
        raise ConfigError(f"{key}.geometry_dim: {geometry_dim} is not a positive multiple of 8")


def box_geometry(boxes: Tensor) -> Tensor:
    """(R, R, 4) relative geometry of xyxy boxes, scale- and translation-invariant:
    log(|dx| / w_m), log(|dy| / h_m), log(w_n / w_m), log(h_n / h_m)."""
    sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=MIN_DISTANCE)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    offsets = ((centres[None, :, :] - centres[:, None, :]).abs() / sizes[:, None, :]).clamp(
        min=MIN_DISTANCE
    )
    return torch.cat([offsets.log(), (sizes[None, :, :] / sizes[:, None, :]).log()], dim=-1)


def sinusoidal(geometry: Tensor, dim: int) -> Tensor:
    """(R, R, dim) sin/cos embedding of the (R, R, 4) geometry (dim / 8 frequencies each)."""
    frequencies = dim // 8
    exponents = (
        torch.arange(frequencies, device=geometry.device, dtype=geometry.dtype) / frequencies
    )
    scaled = GEOMETRY_SCALE * geometry[..., None] / WAVELENGTH**exponents  # (R, R, 4, frequencies)
    return torch.cat([scaled.sin(), scaled.cos()], dim=-1).flatten(-2)


class ObjectRelation(nn.Module):
    """features (R, dim) of one image's RoIs and their xyxy boxes -> features + relation."""

    def __init__(self, dim: int, heads: int, geometry_dim: int, key: str = "relation") -> None:
        super().__init__()
        check_relation(dim, heads, geometry_dim, key)
        self.heads = heads
        self.geometry_dim = geometry_dim
        self.geometry = nn.Linear(geometry_dim, heads)
        self.attention = nn.MultiheadAttention(dim, heads)
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, features: Tensor, boxes: Tensor) -> Tensor:
        if len(features) == 0:
            return features
        embedded = sinusoidal(box_geometry(boxes.float()), self.geometry_dim).to(features.dtype)
        weights = torch.relu(self.geometry(embedded)).clamp(min=MIN_WEIGHT).log()  # (R, R, heads)
        mask = weights.permute(2, 0, 1)  # (heads, query, key): added to the attention logits
        related, _ = self.attention(
            features, features, features, attn_mask=mask, need_weights=False
        )
        return features + related

    def over_images(self, features: Tensor, boxes: Tensor, counts: list[int]) -> Tensor:
        """The relation within each image of a batch whose RoIs are concatenated image by image."""
        parts = zip(features.split(counts), boxes.split(counts))
        return torch.cat(
            [self(image_features, image_boxes) for image_features, image_boxes in parts]
        )
