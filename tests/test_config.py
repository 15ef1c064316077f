from pathlib import Path

import pytest
import yaml

from cxrdet.config import deep_merge, load_params, validate_params
from cxrdet.errors import ConfigError


def demo_params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def test_default_params_are_the_valid_demo_profile(project_root):
    params = load_params(project_root / "params.yaml")
    assert params.data.detect.format == "rsna"
    assert params.data.detect.raw_dir.startswith(params.synthesize.out_dir)
    assert params.data.pretrain.format == "nih"


@pytest.mark.parametrize("profile", ["rsna-gpu", "vinbigdata-gpu", "folder-gpu"])
def test_every_profile_merges_into_valid_params(project_root, profile):
    params = load_params(
        project_root / "params.yaml", project_root / "profiles" / f"{profile}.yaml"
    )
    assert params.prepare.image_size == 512
    assert not params.data.detect.raw_dir.startswith("data/raw/demo")


def test_unknown_key_names_the_key_and_the_allowed_keys(project_root):
    raw = demo_params(project_root)
    raw["split"]["fold"] = 3
    with pytest.raises(ConfigError) as error:
        validate_params(raw, source="params.yaml")
    message = str(error.value)
    assert "params.yaml" in message and "split.fold: unknown key" in message
    assert "folds" in message and "holdout_fraction" in message


def test_unknown_top_level_group_is_rejected(project_root):
    raw = demo_params(project_root)
    raw["trian"] = {}
    with pytest.raises(
        ConfigError, match="trian: unknown key; allowed keys here: synthesize, data"
    ):
        validate_params(raw)


def test_wrong_type_names_the_key(project_root):
    raw = demo_params(project_root)
    raw["prepare"]["image_size"] = "big"
    with pytest.raises(ConfigError, match=r"prepare\.image_size: .*integer.*'big'"):
        validate_params(raw)


def test_out_of_range_value_names_the_key_and_the_bound(project_root):
    raw = demo_params(project_root)
    raw["split"]["holdout_fraction"] = 0.9
    with pytest.raises(
        ConfigError, match=r"split\.holdout_fraction: Input should be less than 0\.5"
    ):
        validate_params(raw)


def test_unknown_format_lists_the_allowed_values(project_root):
    raw = demo_params(project_root)
    raw["data"]["detect"]["format"] = "coco"
    with pytest.raises(ConfigError) as error:
        validate_params(raw)
    assert "data.detect.format" in str(error.value)
    for allowed in ("rsna", "vinbigdata", "nih", "folder"):
        assert allowed in str(error.value)


def test_reader_fusion_only_for_vinbigdata(project_root):
    raw = demo_params(project_root)
    raw["data"]["detect"]["fuse_readers"] = True
    with pytest.raises(ConfigError, match="data.detect: .*vinbigdata"):
        validate_params(raw)


def test_missing_file_and_bad_yaml_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("split: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(broken)


def test_duplicate_key_is_refused_with_its_line(project_root, tmp_path):
    """PyYAML would keep the second `split:` silently; DVC itself refuses the file."""
    params = tmp_path / "params.yaml"
    params.write_text((project_root / "params.yaml").read_text() + "\nsplit:\n  folds: 3\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: not valid YAML: duplicate key 'split'"):
        load_params(params)
    nested = tmp_path / "nested.yaml"
    nested.write_text("split:\n  folds: 3\n  folds: 4\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'folds'[\s\S]*line 3"):
        load_params(nested)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("split", "seed", True, "must be a whole number"),
        ("split", "group_by_patient", "no", "must be true or false"),
        ("split", "group_by_patient", 0, "must be true or false"),
    ],
)
def test_switches_and_counts_are_not_coerced(project_root, section, key, value, message):
    """`seed: true` is not 1 and `group_by_patient: "no"` is not False: lax coercion would change
    the run without a word."""
    raw = demo_params(project_root)
    raw[section][key] = value
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: .*{message}.*\(got {value!r}\)"):
        validate_params(raw)


def test_deep_merge_overrides_leaves_and_keeps_siblings():
    merged = deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 5}, "d": [2, 3]})
    assert merged == {"a": {"b": 5, "c": 2}, "d": [2, 3]}
