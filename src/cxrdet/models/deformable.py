"""Modulated deformable convolutions (DCNv2) in place of a timm backbone's 3x3 convolutions.

torchvision's DeformConv2d does the sampling; written here is only what it lacks: the
layer that predicts its own offsets and masks, and the swap of a backbone stage's 3x3
convolutions. The offset/mask conv starts at zero and the mask is 2 x sigmoid (1 at
zero), so a converted backbone computes exactly what the plain one did and training
starts from the loaded weights (DCNv2's sigmoid alone would halve every output).

Stages are named by their output stride, as FPN does: C<k> has stride 2^k (a ResNet's
res5 / layer4 is C5, the stage the RSNA 1st place's Deformable R-FCN made deformable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from cxrdet.errors import ConfigError

KERNEL = (3, 3)  # the convolutions that become deformable


class ModulatedDeformConv2d(DeformConv2d):
    """DeformConv2d whose offsets and masks come from a conv over its own input.

    Its weight and bias keep DeformConv2d's (= nn.Conv2d's) names, so a converted
    backbone's state_dict only gains the `offset.*` keys."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )  # type: ignore[arg-type]
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset = nn.Conv2d(
            in_channels,
            3 * taps,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,  # (dy, dx) x taps + masks
        )
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ModulatedDeformConv2d:
        """The deformable twin of `conv`, with its weights."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,
            conv.groups,
            conv.bias is not None,  # type: ignore[arg-type]
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.to(conv.weight.device, conv.weight.dtype)

    def offsets_and_masks(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 2 x taps, H', W') offsets in input pixels, (N, taps, H', W') masks in (0, 2)."""
        taps = self.kernel_size[0] * self.kernel_size[1]
        predicted = self.offset(x)
        return predicted[:, : 2 * taps], 2.0 * predicted[:, 2 * taps :].sigmoid()

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        offset, mask = self.offsets_and_masks(x)
        return super().forward(x, offset, mask)


def backbone_stages(backbone: nn.Module) -> dict[int, list[str]]:
    """{k: qualified names of the modules of stage C<k>} of a timm `features_only` model: the
    modules (in registration order, which is forward order in timm) after the previous feature
    level's module, up to the end of the one that outputs C<k> (stride 2^k)."""
    info = backbone.feature_info
    names = [name for name, _ in backbone.named_modules() if name]
    known = set(names)
    stages: dict[int, list[str]] = {}
    start = 0
    for index, module_name in enumerate(info.module_name()):
        # FeatureListNet flattens `stages.3` to `stages_3`; other feature classes keep the name.
        own = module_name if module_name in known else module_name.replace(".", "_")
        end = (
            max(i for i, name in enumerate(names) if name == own or name.startswith(own + ".")) + 1
        )
        stages[round(math.log2(info.reduction()[index]))] = names[start:end]
        start = end
    return stages


def make_deformable(backbone: nn.Module, levels: Sequence[int], name: str, key: str) -> int:
    """Swap every plain 3x3 nn.Conv2d of stages C<k>, k in `levels`, for a ModulatedDeformConv2d
    (in place, weights kept); returns how many. ConfigError naming `key` for a stage the
    backbone `name` lacks or one without such a convolution."""
    stages = backbone_stages(backbone)
    available = ", ".join(f"C{k} (stride {2**k})" for k in stages)
    converted = 0
    for level in levels:
        if level not in stages:
            raise ConfigError(
                f"{key}: C{level} is not a stage of {name!r}; its stages are {available}"
            )
        convs = [
            module_name
            for module_name in stages[level]
            # Conv2d subclasses (timm's Conv2dSame pads in forward) would lose their padding.
            if type(conv := backbone.get_submodule(module_name)) is nn.Conv2d
            and conv.kernel_size == KERNEL
            and conv.padding_mode == "zeros"
        ]
        if not convs:
            raise ConfigError(
                f"{key}: stage C{level} of {name!r} has no plain 3x3 convolution to make deformable"
            )
        for module_name in convs:
            parent, _, child = module_name.rpartition(".")
            owner = backbone.get_submodule(parent) if parent else backbone
            setattr(owner, child, ModulatedDeformConv2d.from_conv(getattr(owner, child)))
        converted += len(convs)
    return converted


def deformable_layers(model: nn.Module) -> list[ModulatedDeformConv2d]:
    return [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
