"""Backbones: any timm name with one input channel; weights from files with strict key checks."""

from pathlib import Path

import pytest
import torch

from cxrdet.errors import ConfigError
from cxrdet.models.backbone import create_backbone, save_backbone
from cxrdet.models.classifier import build_classifier, load_classifier, save_classifier

NAME = "resnet10t"  # tiny and quick to build


def filled(model: torch.nn.Module, value: float) -> dict[str, torch.Tensor]:
    return {
        k: torch.full_like(v, value) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }


def test_any_timm_name_gives_one_channel_pooled_features():
    backbone = create_backbone(NAME)
    assert backbone(torch.zeros(2, 1, 64, 64)).shape == (2, backbone.num_features)


def test_unknown_timm_name_names_the_param_and_suggests():
    with pytest.raises(
        ConfigError,
        match=r"classifier\.variants\.0\.backbone: unknown timm model 'resnet10x'.*resnet10t",
    ):
        create_backbone("resnet10x", param_key="classifier.variants.0.backbone")


def test_imagenet_weights_need_an_explicit_download_permission():
    with pytest.raises(ConfigError, match="pretrain.allow_download: .*download"):
        create_backbone(NAME, imagenet=True, param_key="pretrain.allow_download")


def test_saved_backbone_round_trips_into_pooled_and_feature_models(tmp_path: Path):
    source = create_backbone(NAME)
    source.load_state_dict(filled(source, 0.25))
    path = tmp_path / "nih.pt"
    save_backbone(path, source, NAME, source="nih")

    pooled = create_backbone(NAME, pretrained_path=path)
    for key, value in pooled.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    features = create_backbone(
        NAME, features_only=True, out_indices=(2, 3, 4), pretrained_path=path
    )
    assert features.feature_info.reduction() == [8, 16, 32]
    assert all(
        float(v.float().mean()) == 0.25
        for v in features.state_dict().values()
        if v.is_floating_point()
    )


def test_plain_state_dict_with_head_module_prefix_and_rgb_stem_is_accepted(tmp_path: Path):
    import timm

    rgb = timm.create_model(
        NAME, num_classes=15
    )  # a user's NIH model: 3 channels, a head, DDP keys
    path = tmp_path / "user.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in rgb.state_dict().items()}}, path)
    loaded = create_backbone(NAME, pretrained_path=path)
    stem = rgb.state_dict()["conv1.0.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(loaded.state_dict()["conv1.0.weight"], stem)


def test_weights_with_wrong_keys_name_the_param_file_and_keys(tmp_path: Path):
    state = create_backbone(NAME).state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(ConfigError) as error:
        create_backbone(NAME, pretrained_path=path, param_key="pretrain.weights.resnet10t")
    message = str(error.value)
    assert message.startswith("pretrain.weights.resnet10t: ") and str(path) in message
    assert (
        "missing keys (1): layer1.0.conv1.weight" in message
        and "unexpected keys (1): extra.weight" in message
    )


def test_weights_of_another_architecture_are_refused(tmp_path: Path):
    path = tmp_path / "r18.pt"
    save_backbone(path, create_backbone("resnet18"), "resnet18")
    with pytest.raises(
        ConfigError,
        match=r"pretrain\.weights\.resnet10t: .* holds weights for 'resnet18', not 'resnet10t'",
    ):
        create_backbone(NAME, pretrained_path=path, param_key="pretrain.weights.resnet10t")


def test_missing_or_unsafe_weights_file_names_the_param(tmp_path: Path):
    with pytest.raises(
        ConfigError, match=r"pretrain\.weights\.resnet10t: weights file .*absent\.pt not found"
    ):
        create_backbone(
            NAME, pretrained_path=tmp_path / "absent.pt", param_key="pretrain.weights.resnet10t"
        )
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a pickled module: refused by weights_only loading
    with pytest.raises(
        ConfigError, match=r"pretrain\.weights\.resnet10t: .*module\.pt is not a weights file"
    ):
        create_backbone(NAME, pretrained_path=pickled, param_key="pretrain.weights.resnet10t")


def test_classifier_file_holds_state_dict_and_config_and_rebuilds(tmp_path: Path):
    model = build_classifier(NAME, 3, drop_rate=0.1)
    path = tmp_path / "clf.pt"
    save_classifier(
        path, model, {"backbone": NAME, "num_classes": 3, "drop_rate": 0.1, "image_size": 64}
    )
    content = torch.load(path, weights_only=True)
    assert set(content) == {"kind", "config", "state_dict"}
    loaded, config = load_classifier(path)
    assert config["image_size"] == 64
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_imagenet_weights_are_requested_from_timm_only_when_allowed(monkeypatch):
    import timm

    calls: list[dict] = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: calls.append(kw) or real(name))
    create_backbone(NAME)
    create_backbone(NAME, imagenet=True, allow_download=True)
    assert [call["pretrained"] for call in calls] == [False, True]
    assert all(call["in_chans"] == 1 for call in calls)
