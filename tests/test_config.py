from pathlib import Path

import pytest
import yaml

from pnoc.config import Params, flatten, parse_params
from pnoc.errors import ConfigError
from tests.conftest import REPO


def test_defaults_and_params_yaml_parse(tiny_params):
    assert isinstance(parse_params({}), Params)
    params = parse_params(tiny_params)
    assert params.data.synthetic.classes == 3
    assert params.cam.pnoc.mask_threshold == 0.6


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"cam": {"lrr": 0.1}}, "cam.lrr: unknown key"),
        ({"cam": {"pnoc": {"mask_threshold": 1.5}}}, "cam.pnoc.mask_threshold"),
        ({"oc": {"epochs": -1}}, "oc.epochs"),
        ({"cams": {"thresholds": {"start": 0.9, "stop": 0.1}}}, "start <= stop"),
        ({"base": {"device": "tpu"}}, "base.device"),
        ({"data": {"synthetic": {"classes": 0}}}, "data.synthetic.classes"),
        ({"data": {"synthetic": {"body_size": [0.6, 0.3]}}}, "data.synthetic.body_size"),
        ({"data": {"synthetic": {"mark_area": [0.0, 0.1]}}}, "data.synthetic.mark_area"),
        ({"data": {"synthetic": {"shape": [500, 16]}}}, "data.synthetic.shape"),
        ({"data": {"synthetic": {"shape": [500]}}}, "data.synthetic.shape"),
        ({"data": {"synthetic": {"layout": "kitti"}}}, "data.synthetic.layout"),
        ({"cam": {"method": "magic"}}, "cam.method"),
        ({"cam": {"frozen_stages": 3}}, "cam.frozen_stages"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        parse_params(override, source="params.yaml")
    assert fragment in str(err.value)
    assert "params.yaml" in str(err.value)


def test_range_is_stated():
    with pytest.raises(ConfigError, match=r"less than or equal to 1"):
        parse_params({"cam": {"pnoc": {"mask_threshold": 1.5}}})
    with pytest.raises(ConfigError, match=r"greater than or equal to 1"):
        parse_params({"oc": {"epochs": -1}})


def test_missing_real_dataset_folder(tmp_path: Path):
    missing = tmp_path / "VOC2012"
    with pytest.raises(ConfigError, match="VOC2012' does not exist"):
        parse_params({"data": {"name": "voc", "root": str(missing)}})
    missing.mkdir()
    assert parse_params({"data": {"name": "voc", "root": str(missing)}}).data.root == missing


def test_missing_root_error_names_the_key_and_path_only(tmp_path: Path):
    missing = tmp_path / "VOC2012"
    with pytest.raises(ConfigError) as err:
        parse_params({"data": {"name": "voc", "root": str(missing)}}, source="params.yaml")
    msg = str(err.value)
    assert msg.startswith(f"params.yaml: data.root: dataset folder '{missing}' does not exist")
    assert "\n" not in msg  # one problem, one line
    assert "synthetic" not in msg and "image_size" not in msg  # not the whole section


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"cams": {"thresholds": {"start": 0.9, "stop": 0.1}}},
            "params.yaml: cams.thresholds: expected start <= stop, got start=0.9, stop=0.1",
        ),
        (
            {"cams": {"eval_split": "x"}},
            "params.yaml: cams.eval_split: 'x' must be one of cams.splits ['train', 'val']",
        ),
    ],
)
def test_section_checks_name_the_full_key(override, message):
    with pytest.raises(ConfigError) as err:
        parse_params(override)
    assert str(err.value) == message


def test_synthetic_root_is_fixed():
    with pytest.raises(ConfigError, match="data/synthetic"):
        parse_params({"data": {"root": "elsewhere"}})


def test_synthetic_shape_and_layout():
    data = parse_params({"data": {"synthetic": {"shape": [500, 375]}}}).data
    assert data.synthetic.shape == (500, 375) and data.image_size == 96
    assert data.synthetic.layout == "voc" and parse_params({}).data.synthetic.shape is None


@pytest.mark.parametrize(
    ("name", "layout"), [("voc", "voc"), ("voc", "voc_sbd"), ("coco14", "coco")]
)
def test_real_recipes_run_on_the_generated_folder(name, layout):
    """data.root data/synthetic is the generate stage's output: no existence check, and the
    layout it is generated in must be one that data.name reads."""
    raw = {"data": {"name": name, "root": "data/synthetic", "synthetic": {"layout": layout}}}
    data = parse_params(raw).data
    assert (data.name, data.synthetic.layout) == (name, layout)


@pytest.mark.parametrize(
    ("name", "layout"),
    [("voc", "coco"), ("coco14", "voc"), ("coco14", "voc_sbd"), ("synthetic", "voc_sbd"),
     ("synthetic", "coco")],
)  # fmt: skip
def test_name_and_generated_layout_must_agree(name, layout):
    raw = {"data": {"name": name, "root": "data/synthetic", "synthetic": {"layout": layout}}}
    with pytest.raises(ConfigError) as err:
        parse_params(raw, source="params.yaml")
    msg = str(err.value)
    assert msg.startswith("params.yaml: data.synthetic.layout: ")
    assert f"'{layout}'" in msg and f"data.name '{name}'" in msg and "data/synthetic" in msg
    assert "\n" not in msg


def test_layout_is_free_when_data_is_elsewhere(tmp_path: Path):
    """Pointing at a real folder, the generated layout is nobody's input."""
    raw = {"data": {"name": "voc", "root": str(tmp_path), "synthetic": {"layout": "coco"}}}
    assert parse_params(raw).data.synthetic.layout == "coco"


def test_threshold_values_and_flatten():
    ramp = {"start": 0.0, "end": 1.0, "until": 1.0}
    params = parse_params({"cam": {"pnoc": {"ow": ramp}}, "data": {"synthetic": {"train": 800}}})
    values = params.cams.thresholds.values()
    assert values[0] == pytest.approx(0.05) and values[-1] == pytest.approx(0.80)
    assert len(values) == 16
    flat = flatten(params)
    assert flat["cam.pnoc.ow.end"] == 1.0
    assert flat["data.synthetic.train"] == 800


def test_params_are_frozen():
    params = parse_params({})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        params.base.seed = 3


def test_library_defaults_are_params_yaml():
    """One source for each default: the typed sections' defaults are params.yaml's values."""
    shipped = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert flatten(parse_params({})) == flatten(shipped)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_device_accepts_an_index(device):
    assert parse_params({"base": {"device": device}}).base.device == device
