"""Built-in CIFAR models: sizes against published numbers, fx-traceability, registry."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from fxprune.errors import ConfigError, ModelLoadError
from fxprune.models import create_model, default_input_shape, list_models, registry
from fxprune.models.registry import register_model

ALL_MODELS = ["mobilenetv2", "resnet110", "resnet20", "resnet32", "resnet56", "vgg16_bn"]

# name -> (published parameter count, relative tolerance)
PUBLISHED_PARAMS = {
    "resnet20": (0.27e6, 0.05),  # He et al. 2016, table 6
    "resnet32": (0.46e6, 0.05),
    "resnet56": (0.85e6, 0.05),
    "resnet110": (1.7e6, 0.05),
    "vgg16_bn": (15.0e6, 0.10),  # Li et al. 2017, CIFAR VGG-16
    "mobilenetv2": (2.2e6, 0.10),  # common CIFAR ports (kuangliu/pytorch-cifar)
}


def count_params(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of Conv2d and Linear layers per sample, via forward hooks."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        outputs_per_sample = out.numel() // out.shape[0]
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            total += outputs_per_sample * module.in_channels // module.groups * kernel_h * kernel_w
        else:
            total += outputs_per_sample * module.in_features

    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.randn(input_shape))
    for handle in handles:
        handle.remove()
    return total


def test_list_models_names_every_builtin_and_filters() -> None:
    assert list_models() == ALL_MODELS
    assert list_models("resnet*") == ["resnet110", "resnet20", "resnet32", "resnet56"]
    assert list_models("*bn") == ["vgg16_bn"]
    assert list_models("nothing*") == []


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_input_shape_is_cifar(name: str) -> None:
    assert default_input_shape(name) == (1, 3, 32, 32)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_param_count_matches_published(name: str) -> None:
    published, tolerance = PUBLISHED_PARAMS[name]
    params = count_params(create_model(name))
    assert abs(params - published) <= tolerance * published, f"{name}: {params:,} params"


@pytest.mark.parametrize(
    ("name", "expected_params"),
    # Exact counts pin the architecture (option B shortcut, 512-512 VGG head).
    [
        ("resnet20", 272_474),
        ("resnet56", 855_770),
        ("resnet110", 1_730_714),
        ("vgg16_bn", 14_987_722),
        ("mobilenetv2", 2_236_682),
    ],
)
def test_param_count_exact(name: str, expected_params: int) -> None:
    assert count_params(create_model(name)) == expected_params


def test_resnet56_macs_near_125m() -> None:
    macs = count_macs(create_model("resnet56"), (1, 3, 32, 32))
    assert 120e6 <= macs <= 130e6, f"{macs:,} MACs"


def test_count_macs_helper_on_tiny_conv() -> None:
    # 1 sample, 4 out channels, 5x5 output, 2 in channels / 1 group, 3x3 kernel = 900
    conv = nn.Conv2d(2, 4, 3, padding=1)
    assert count_macs(conv, (1, 2, 5, 5)) == 4 * 5 * 5 * 2 * 9
    depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)  # 4*25 outputs, 1 in-ch each, 9 taps
    assert count_macs(depthwise, (1, 4, 5, 5)) == 900
    assert count_macs(nn.Linear(8, 3), (2, 8)) == 24


@pytest.mark.parametrize("name", ALL_MODELS)
def test_traced_output_equals_eager(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(inputs), model(inputs), rtol=0, atol=0)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shape(name: str, num_classes: int) -> None:
    model = create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("depth", [20, 56])
def test_resnet_projects_only_where_shape_changes(depth: int) -> None:
    model = create_model(f"resnet{depth}")
    one_by_one = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ]
    assert [(conv.in_channels, conv.out_channels, conv.stride) for conv in one_by_one] == [
        (16, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]
    assert sum(isinstance(m, nn.Identity) for m in model.modules()) == (depth - 2) // 2 - 2


def test_resnet_init_kaiming_and_unit_batchnorm() -> None:
    torch.manual_seed(0)
    model = create_model("resnet56")
    conv = model.layer3[-1].conv2  # 64 -> 64, 3x3: 36,864 weights
    expected_std = (2.0 / (64 * 9)) ** 0.5  # kaiming normal, fan_out, relu gain
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.03)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in batchnorms)
    assert all(torch.equal(bn.bias, torch.zeros_like(bn.bias)) for bn in batchnorms)


def test_mobilenetv2_keeps_4x4_final_map() -> None:
    model = create_model("mobilenetv2").eval()
    with torch.no_grad():
        features = model.features(torch.randn(1, 3, 32, 32))
    assert features.shape == (1, 1280, 4, 4)  # stem and stage 2 at stride 1


def test_unknown_model_lists_close_matches() -> None:
    with pytest.raises(ModelLoadError, match=r"'resnet57'.*did you mean.*resnet56") as info:
        create_model("resnet57")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="resnet57"):
        default_input_shape("resnet57")


def test_bad_num_classes_raises() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet20", num_classes=0)


def test_register_twice_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_MODEL_REGISTRY", {})
    monkeypatch.setattr(registry, "_DEFAULT_INPUT_SHAPES", {})

    @register_model(input_shape=(1, 1, 8, 8))
    def tiny(num_classes: int = 10) -> nn.Module:
        return nn.Linear(8, num_classes)

    assert registry.list_models() == ["tiny"]
    assert registry.default_input_shape("tiny") == (1, 1, 8, 8)
    assert registry.create_model("tiny", num_classes=3).out_features == 3
    with pytest.raises(ConfigError, match=r"'tiny' is already registered"):
        register_model(tiny)
