"""timm backbones with one input channel, shared by every model in the project.

Any timm name works, as a pooled-feature extractor (classifiers) or as feature maps
(`features_only`, detectors). Weights come from a file, checked key by key against the
architecture, or from timm's ImageNet weights only when a download is explicitly
allowed; otherwise the backbone starts from random weights and nothing is fetched.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cxrdet.config import DetectorParams
from cxrdet.errors import ConfigError
from cxrdet.models.files import save_model_file

BACKBONE_KIND = "backbone"  # `kind` of the model files that `save_backbone` writes
SHOWN_KEYS = 5  # how many offending keys an error lists


def check_timm_name(name: str, param_key: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "timm.list_models() lists the names"
    raise ConfigError(f"{param_key}: unknown timm model {name!r}; {hint}")


def create_backbone(
    name: str,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    pretrained_path: str | Path | None = None,
    imagenet: bool = False,
    allow_download: bool = False,
    param_key: str = "backbone",
    **timm_kwargs: Any,
) -> nn.Module:
    """A one-channel timm model: pooled features (`num_features` wide) or feature maps.

    `pretrained_path`: a cxrdet backbone file or a plain state_dict, loaded with strict key
    checking (a 3-channel stem is summed to one channel, as timm does for ImageNet weights).
    `imagenet`: timm's ImageNet weights, a download that `allow_download` must permit.
    Errors name `param_key`, the params key that chose this backbone.
    """
    check_timm_name(name, param_key)
    if imagenet and not allow_download:
        raise ConfigError(
            f"{param_key}: ImageNet weights for {name!r} are a download; it needs allow_download"
        )
    if imagenet and pretrained_path is not None:
        raise ValueError("give pretrained_path or imagenet, not both")
    kwargs: dict[str, Any] = {"in_chans": 1, **timm_kwargs}
    if features_only:
        kwargs |= {
            "features_only": True,
            **({"out_indices": tuple(out_indices)} if out_indices else {}),
        }
    else:
        kwargs["num_classes"] = 0  # the pooled features; heads are the caller's
    if pretrained_path is None:
        return timm.create_model(name, pretrained=imagenet, **kwargs)

    pooled = timm.create_model(name, pretrained=False, in_chans=1, num_classes=0, **timm_kwargs)
    load_backbone_weights(pooled, name, Path(pretrained_path), param_key)
    if not features_only:
        return pooled
    # timm loads weights into the whole network before cutting it into feature stages:
    # hand it the checked weights, with every remote source blanked out.
    overlay = {
        "state_dict": pooled.state_dict(),
        "num_classes": 0,
        "input_size": (1, *pooled.pretrained_cfg["input_size"][1:]),
        "hf_hub_id": None,
        "url": None,
        "source": None,
        "file": None,
    }
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def save_backbone(path: Path, backbone: nn.Module, name: str, **config: Any) -> None:
    """A backbone without head, as `create_backbone(pretrained_path=...)` loads it; `config`
    records where it came from (source, data hash, metrics...)."""
    save_model_file(path, BACKBONE_KIND, backbone.state_dict(), {"backbone": name, **config})


def read_weights(path: Path, name: str, param_key: str) -> dict[str, torch.Tensor]:
    """The state_dict in a cxrdet backbone file or a plain (optionally wrapped) state_dict."""
    if not path.is_file():
        raise ConfigError(f"{param_key}: weights file {path} not found")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or unsafe files
        raise ConfigError(
            f"{param_key}: {path} is not a weights file torch can load safely ({error})"
        ) from None
    if isinstance(content, dict) and content.get("kind") == BACKBONE_KIND:
        trained_for = content["config"].get("backbone")
        if trained_for != name:
            raise ConfigError(
                f"{param_key}: {path} holds weights for {trained_for!r}, not {name!r}"
            )
        content = content["state_dict"]
    elif isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(
        isinstance(v, torch.Tensor) for v in content.values()
    ):
        raise ConfigError(f"{param_key}: {path} does not hold a state_dict (name -> tensor)")
    # Weights saved from a DistributedDataParallel model carry a `module.` prefix.
    return {key.removeprefix("module."): value for key, value in content.items()}


def load_backbone_weights(model: nn.Module, name: str, path: Path, param_key: str) -> None:
    """Load `path` into a pooled timm model (num_classes=0); every key must match."""
    state_dict = read_weights(path, name, param_key)
    cfg = model.pretrained_cfg
    heads = cfg.get("classifier") or ()
    for head in (heads,) if isinstance(heads, str) else heads:
        # A head (NIH's 15 outputs, ImageNet's 1000) is not part of the backbone.
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(f"{head}.")}
    expected = model.state_dict()
    stems = cfg.get("first_conv") or ()
    for stem in (stems,) if isinstance(stems, str) else stems:
        weight = state_dict.get(f"{stem}.weight")
        if (
            weight is not None
            and weight.ndim == 4
            and weight.shape[1] == 3
            and expected[f"{stem}.weight"].shape[1] == 1
        ):
            state_dict[f"{stem}.weight"] = weight.sum(dim=1, keepdim=True)  # RGB stem -> grey
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    if missing or unexpected or wrong_shape:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:SHOWN_KEYS])}"
            + (", ..." if len(keys) > SHOWN_KEYS else "")
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", wrong_shape),
            )
            if keys
        ]
        raise ConfigError(
            f"{param_key}: {path} does not fit timm model {name!r}: " + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)


def backbone_source(
    params: DetectorParams, pretrained_dir: Path, allow_download: bool
) -> dict[str, Any]:
    """create_backbone's weight arguments for detector.weights."""
    if params.weights == "pretrain":
        path = pretrained_dir / f"{params.backbone}.pt"
        if not path.is_file():
            raise ConfigError(
                f"detector.weights: {path} not found; the pretrain stage writes it for the "
                "backbones of classifier.variants"
            )
        return {"pretrained_path": path}
    if params.weights == "imagenet":
        return {"imagenet": True, "allow_download": allow_download}
    return {}
