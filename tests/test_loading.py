"""load_model: every MODEL form a CLI user types, and every way it can go wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fxprune.errors import ConfigError, ModelLoadError
from fxprune.loading import load_model, parse_shape

TINY_NET = """
import torch
from torch import nn

class TinyNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))
"""


def write_model_file(tmp_path: Path, body: str, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text(TINY_NET + textwrap.dedent(body))
    return path


def assert_one_line_error(spec: str, match: str, **kwargs: object) -> ModelLoadError:
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(spec, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


# --- parse_shape ------------------------------------------------------------------------


def test_parse_shape_accepts_commas_and_spaces() -> None:
    assert parse_shape("1,3,32,32") == (1, 3, 32, 32)
    assert parse_shape(" 2, 3 ,224,224 ") == (2, 3, 224, 224)
    assert parse_shape("(8,)") == (8,)


@pytest.mark.parametrize("text", ["", "1,3,x,32", "1,3,-32,32", "1,0,4", "1;3;32", "1,,3"])
def test_parse_shape_rejects_bad_text(text: str) -> None:
    with pytest.raises(ConfigError, match="bad shape"):
        parse_shape(text)


# --- file forms -------------------------------------------------------------------------


def test_file_with_build_model_and_input_shape(tmp_path: Path) -> None:
    path = write_model_file(
        tmp_path, "def build_model(num_classes=10):\n    return TinyNet(num_classes)\n"
    )
    model, inputs = load_model(str(path), input_shape=(2, 3, 8, 8), num_classes=5)
    assert type(model).__name__ == "TinyNet" and not model.training
    assert len(inputs) == 1 and inputs[0].shape == (2, 3, 8, 8)
    assert model(*inputs).shape == (2, 5)


def test_file_with_module_level_model_and_example_inputs(tmp_path: Path) -> None:
    path = write_model_file(
        tmp_path,
        """
        model = TinyNet(7)

        def example_inputs():
            return torch.ones(1, 3, 6, 6)
        """,
    )
    model, inputs = load_model(str(path))
    assert model.fc.out_features == 7 and not model.training
    assert len(inputs) == 1 and torch.equal(inputs[0], torch.ones(1, 3, 6, 6))


def test_explicit_input_shape_wins_over_example_inputs(tmp_path: Path) -> None:
    path = write_model_file(
        tmp_path, "model = TinyNet()\ndef example_inputs():\n    return (torch.ones(1, 3, 6, 6),)\n"
    )
    _, inputs = load_model(str(path), input_shape="1,3,4,4")
    assert inputs[0].shape == (1, 3, 4, 4)


def test_example_inputs_tuple_is_kept(tmp_path: Path) -> None:
    path = write_model_file(
        tmp_path,
        "model = TinyNet()\ndef example_inputs():\n    return torch.zeros(1, 3, 4, 4), torch.ones(2)\n",
    )
    _, inputs = load_model(str(path))
    assert [tuple(t.shape) for t in inputs] == [(1, 3, 4, 4), (2,)]


@pytest.mark.parametrize(("attr", "expected_out"), [("TinyNet", 10), ("make_wide", 20)])
def test_file_colon_name_calls_class_or_function(
    tmp_path: Path, attr: str, expected_out: int
) -> None:
    path = write_model_file(tmp_path, "def make_wide():\n    return TinyNet(20)\n")
    model, inputs = load_model(f"{path}:{attr}", input_shape=(1, 3, 8, 8))
    assert model(*inputs).shape == (1, expected_out)


def test_file_colon_name_accepts_a_ready_instance(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, "net = TinyNet(3)\n")
    model, _ = load_model(f"{path}:net", input_shape=(1, 3, 8, 8))
    assert model.fc.out_features == 3


def test_file_can_import_its_sibling_modules(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("WIDTH = 6\n")
    path = write_model_file(tmp_path, "import helpers\nmodel = TinyNet(helpers.WIDTH)\n")
    model, _ = load_model(str(path), input_shape=(1, 3, 4, 4))
    assert model.fc.out_features == 6


def test_same_file_loads_twice_into_independent_modules(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, "model = TinyNet()\n")
    first, _ = load_model(str(path), input_shape=(1, 3, 4, 4))
    second, _ = load_model(str(path), input_shape=(1, 3, 4, 4))
    assert first is not second and type(first) is not type(second)


def test_example_inputs_are_seeded(tmp_path: Path) -> None:
    _, first = load_model("fxprune:resnet20")
    torch.manual_seed(123)  # the global RNG must not matter
    _, second = load_model("fxprune:resnet20")
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[0], torch.randn((1, 3, 32, 32), generator=generator))


# --- file errors ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(str(tmp_path / "nope.py"), r"model file not found: .*nope\.py")


def test_file_raising_on_import_names_exception(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, "raise RuntimeError('no GPU\\nhere')\n")
    assert_one_line_error(str(path), r"model\.py: importing it raised RuntimeError: no GPU here")


def test_file_with_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("def build_model(:\n")
    assert_one_line_error(str(path), r"broken\.py: importing it raised SyntaxError")


def test_file_defining_no_model(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, "")
    assert_one_line_error(str(path), r"defines no model: add build_model\(\)")


def test_file_without_shape_asks_for_input_shape(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, "model = TinyNet()\n")
    assert_one_line_error(str(path), r"pass --input-shape 1,3,32,32")


@pytest.mark.parametrize(
    ("body", "suffix", "match"),
    [
        ("model = 3\n", "", r"model\.py:model is of type int, expected a torch\.nn\.Module"),
        ("def build_model():\n    return {}\n", "", r"build_model\(\) returned type dict"),
        ("answer = 42\n", ":answer", r"model\.py:answer is of type int"),
        ("def build_model():\n    return 1 / 0\n", "", r"build_model\(\) raised ZeroDivisionError"),
        ("", ":missing", r"model\.py defines no 'missing'"),
        (
            "def example_inputs():\n    return [1, 2]\nmodel = TinyNet()\n",
            "",
            r"example_inputs\(\) returned list, expected a tensor",
        ),
    ],
)
def test_file_objects_that_are_not_models(
    tmp_path: Path, body: str, suffix: str, match: str
) -> None:
    path = write_model_file(tmp_path, body)
    assert_one_line_error(f"{path}{suffix}", match)


def test_num_classes_for_a_builder_without_it(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, "def build_model():\n    return TinyNet()\n")
    assert_one_line_error(
        str(path), r"takes no num_classes argument", num_classes=3, input_shape=(1, 3, 4, 4)
    )


@pytest.mark.parametrize("bad_shape", ["1,3,x", "", (1, 0, 4), (1.5, 3)])
def test_bad_input_shape(tmp_path: Path, bad_shape: object) -> None:
    assert_one_line_error("fxprune:resnet20", r"(bad shape|bad input shape)", input_shape=bad_shape)


@pytest.mark.parametrize("spec", ["resnet56", "model.txt", "model.py:not-a-name"])
def test_unrecognised_spec(spec: str) -> None:
    assert_one_line_error(spec, r"(unrecognised MODEL|is not a Python name)")


# --- torchvision and built-in registry --------------------------------------------------


def test_torchvision_model_without_weights() -> None:
    model, inputs = load_model("torchvision:resnet18", num_classes=4)
    assert inputs[0].shape == (1, 3, 224, 224) and not model.training
    with torch.no_grad():
        assert model(*inputs).shape == (1, 4)


def test_torchvision_inception_defaults_to_299(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    # Building inception_v3 takes seconds; only the shape choice is under test here.
    monkeypatch.setattr(torchvision.models, "get_model", lambda name, **kw: nn.Identity())
    _, inputs = load_model("torchvision:inception_v3")
    assert inputs[0].shape == (1, 3, 299, 299)


def test_torchvision_unknown_name() -> None:
    assert_one_line_error("torchvision:resnet5O", r"unknown torchvision model 'resnet5O'.*resnet50")


def test_builtin_model() -> None:
    model, inputs = load_model("fxprune:resnet56", num_classes=100)
    assert inputs[0].shape == (1, 3, 32, 32) and not model.training
    with torch.no_grad():
        assert model(*inputs).shape == (1, 100)


def test_builtin_unknown_name() -> None:
    assert_one_line_error("fxprune:resnet57", r"unknown built-in model 'resnet57'.*resnet56")


# --- input specs (issue 13) -------------------------------------------------------------


def test_train_prune_contract_names_the_builder_not_a_missing_option(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, "def build_model():\n    return TinyNet()\n")
    error = assert_one_line_error(str(path), r"define build_model\(num_classes=10\)",
                                  num_classes=3, input_shape=(1, 3, 4, 4))
    assert "--num-classes" not in str(error)
    ready = write_model_file(tmp_path, "model = TinyNet()\n", name="ready.py")
    error = assert_one_line_error(str(ready), "ready-built", num_classes=3)
    assert "--num-classes" not in str(error)


def test_input_specs_give_dtypes_and_ranges(tmp_path: Path) -> None:
    from fxprune.loading import InputSpec, make_inputs

    tokens, image = make_inputs([InputSpec.parse("2,40:int64:5-9"), InputSpec.parse("2,3,4,4")])
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 40)
    assert int(tokens.min()) >= 5 and int(tokens.max()) <= 8
    assert image.dtype == torch.float32
    # one float spec draws exactly what a plain shape always drew
    (single,) = make_inputs([InputSpec((1, 3, 4, 4))])
    assert torch.equal(single, torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert InputSpec.parse("1,5:bool").make(torch.Generator()).dtype == torch.bool


@pytest.mark.parametrize("text,fragment", [
    ("1,40:int65", "unknown dtype"),
    ("1,40:int64:9-5", "LOW < HIGH"),
    ("1,40:int64:a-b", "LOW-HIGH"),
    ("1,40:float32:0-5", "integer inputs"),
])
def test_bad_input_specs(text: str, fragment: str) -> None:
    from fxprune.loading import InputSpec

    with pytest.raises(ConfigError, match=fragment):
        InputSpec.parse(text)


def test_a_shape_without_batch_dim_is_refused(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, "model = TinyNet()\n")
    assert_one_line_error(str(path), r"no batch dimension.*--input-shape 1,3,8,8",
                          input_shape="3,8,8")
    assert_one_line_error("torchvision:resnet18", "no batch dimension", input_shape="3,64,64")
    assert_one_line_error("fxprune:resnet20", "no batch dimension", input_shape="32")
    _, (x,) = load_model(str(path), input_shape=["2,3,8,8"])
    assert x.shape == (2, 3, 8, 8)


def test_torchvision_detectors_build_without_downloading_a_backbone(monkeypatch) -> None:
    import torchvision

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", no_download)
    model, (x,) = load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn",
                             input_shape="1,3,96,96")
    assert x.shape == (1, 3, 96, 96) and not model.training
