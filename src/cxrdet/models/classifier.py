"""Image classifier: a one-channel timm backbone, dropout and a linear head.

The backbone is its own submodule so that its weights move between stages on their own:
NIH pretraining publishes `backbone`, fold classifiers start from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrdet.models.backbone import create_backbone
from cxrdet.models.files import load_model_file, save_model_file

CLASSIFIER_KIND = "classifier"


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(backbone.num_features, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) normalised images -> (N, num_classes) logits."""
        return self.head(self.dropout(self.backbone(images)))


def build_classifier(
    backbone: str,
    num_classes: int,
    *,
    drop_rate: float = 0.0,
    pretrained_path: str | Path | None = None,
    imagenet: bool = False,
    allow_download: bool = False,
    param_key: str = "backbone",
) -> Classifier:
    body = create_backbone(
        backbone,
        pretrained_path=pretrained_path,
        imagenet=imagenet,
        allow_download=allow_download,
        param_key=param_key,
    )
    return Classifier(body, num_classes, drop_rate)


def save_classifier(path: Path, model: Classifier, config: dict[str, Any]) -> None:
    """The whole classifier and the config `load_classifier` rebuilds it from:
    backbone, num_classes, drop_rate, plus whatever describes its use (image_size, classes)."""
    save_model_file(path, CLASSIFIER_KIND, model.state_dict(), config)


def load_classifier(path: Path) -> tuple[Classifier, dict[str, Any]]:
    state_dict, config = load_model_file(path, CLASSIFIER_KIND)
    model = build_classifier(
        config["backbone"], config["num_classes"], drop_rate=config.get("drop_rate", 0.0)
    )
    model.load_state_dict(state_dict)
    return model, config
