"""ONNX export parity on the built-in models, dense and slim; the whole zoo under `slow`."""

from __future__ import annotations

import pytest
import torch

import fxprune
from fxprune.deploy import export_onnx
from fxprune.models import create_model, list_models

pytestmark = pytest.mark.onnx


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn", "mobilenetv2"])
def test_builtin_dense_and_slim_export_with_parity(name, tmp_path):
    model = create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    slim = fxprune.prune(model, x, ratio=0.85, min_ratio=0.15, scorer="synflow").model
    for tag, net in (("dense", model), ("slim", slim)):
        report = export_onnx(net, (x,), tmp_path / f"{tag}.onnx")
        assert report.opset >= 17
        assert report.max_abs_diff < 1e-3, (tag, report)
    assert (tmp_path / "slim.onnx").stat().st_size < (tmp_path / "dense.onnx").stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_all_builtins_export(name, tmp_path):
    model = create_model(name).eval()
    x = torch.randn(1, 3, 32, 32)
    slim = fxprune.prune(model, x, ratio=0.5, scorer="l1").model
    export_onnx(slim, (x,), tmp_path / "slim.onnx")


def _zoo():
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


@pytest.mark.slow
@pytest.mark.zoo
@pytest.mark.parametrize("name", _zoo())
def test_zoo_slim_export(name, tmp_path):
    import torchvision

    model = torchvision.models.get_model(name, weights=None).eval()
    size = 299 if name == "inception_v3" else 224
    x = torch.randn(1, 3, size, size)
    slim = fxprune.prune(model, x, ratio=0.5, scorer="l1").model
    export_onnx(slim, (x,), tmp_path / "slim.onnx", rtol=1e-2, atol=1e-3)
