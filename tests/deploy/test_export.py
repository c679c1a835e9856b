"""export_onnx: parity with PyTorch (example batch and another batch), atomic writes,
and one-line ExportErrors naming the model for everything that cannot be exported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fxprune.deploy import ExportReport, export_onnx
from fxprune.errors import ExportError

pytestmark = pytest.mark.onnx
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


# ----------------------------------------------------------------------------- tiny nets


class ResidualBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.stem(x)  # (N, 8, H, W)
        y = torch.relu(self.bn(self.conv(y)) + y)
        return self.head(y.mean((2, 3)))  # (N, 5)


class DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 1)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.bn = nn.BatchNorm2d(12)
        self.project = nn.Conv2d(12, 6, 1)

    def forward(self, x):
        y = nn.functional.relu6(self.bn(self.depthwise(self.expand(x))))
        return self.project(y).flatten(1)  # (N, 6 * H * W)


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.squeeze = nn.Conv2d(8, 2, 1)
        self.excite = nn.Conv2d(2, 8, 1)

    def forward(self, x):
        y = self.conv(x)  # (N, 8, H, W)
        weight = nn.functional.adaptive_avg_pool2d(y, 1)  # (N, 8, 1, 1)
        weight = torch.sigmoid(self.excite(torch.relu(self.squeeze(weight))))
        return y * weight


class TwoHeads(nn.Module):
    """Two inputs, two outputs: every input and output gets the batch axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, image, extra):
        pooled = self.conv(image).mean((2, 3))  # (N, 4)
        return pooled + extra, self.fc(pooled)


class HistogramNet(nn.Module):
    """aten::histc has no ONNX translation in either exporter."""

    def forward(self, x):
        return torch.histc(x, bins=4)


class ReturnsChannelCount(nn.Module):
    def forward(self, x):
        return x.shape[1]


class NoisyNet(nn.Module):
    """Exports fine, but onnxruntime's random numbers are not torch's: parity must fail."""

    def forward(self, x):
        return x + torch.rand_like(x)


class DataDependentBranch(nn.Module):
    """TorchScript would bake in one branch; torch.export refuses: no silent wrong file."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y if y.sum() > 0 else -y


def image(batch: int = 1, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def run_onnx(path: Path, *inputs: torch.Tensor) -> list:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})


def assert_exported(report: ExportReport, path: Path, model: nn.Module, batch_shape) -> None:
    """The file exists, passes the checker, and matches torch at a batch it was not traced at."""
    assert report.path == str(path) and path.is_file()
    onnx.checker.check_model(str(path))
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-3
    other = torch.randn(5, *batch_shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.eval()(other)
    (got,) = run_onnx(path, other)
    assert got.shape == tuple(expected.shape)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("net", [ResidualBNNet, DepthwiseNet, SENet], ids=lambda c: c.__name__)
def test_small_nets_match_torch_at_another_batch_size(net, tmp_path):
    torch.manual_seed(0)
    model = net().eval()
    path = tmp_path / "model.onnx"
    report = export_onnx(model, (image(),), path)
    assert report.exporter == "torchscript" and report.opset == 17
    assert_exported(report, path, model, (1, 3, 16, 16))


@pytest.mark.zoo
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_match_torch(name, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(model, (image(1, 64),), path)
    assert_exported(report, path, model, (1, 3, 64, 64))


def test_symbolic_traced_graph_module_exports(tmp_path):
    torch.manual_seed(0)
    graph_module = torch.fx.symbolic_trace(ResidualBNNet().eval())
    path = tmp_path / "gm.onnx"
    report = export_onnx(graph_module, image(2), path)  # a bare tensor is accepted too
    assert_exported(report, path, graph_module, (2, 3, 16, 16))


def test_dynamo_exporter_on_graph_module(tmp_path):
    torch.manual_seed(0)
    graph_module = torch.fx.symbolic_trace(SENet().eval())
    path = tmp_path / "gm.onnx"
    report = export_onnx(graph_module, (image(),), path, exporter="dynamo")
    assert report.exporter == "dynamo"
    assert report.opset >= 17  # dynamo implements >= 18 and may keep it when down-conversion fails
    assert_exported(report, path, graph_module, (1, 3, 16, 16))


def test_multiple_inputs_and_outputs_get_a_batch_axis(tmp_path):
    torch.manual_seed(0)
    model = TwoHeads().eval()
    path = tmp_path / "two.onnx"
    export_onnx(model, (image(1), torch.randn(1, 4)), path)
    image4, extra4 = image(4), torch.randn(4, 4)
    summed, logits = run_onnx(path, image4, extra4)
    with torch.no_grad():
        expected_sum, expected_logits = model(image4, extra4)
    torch.testing.assert_close(torch.from_numpy(summed), expected_sum, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(logits), expected_logits, rtol=1e-3, atol=1e-4)


def test_static_batch_when_asked(tmp_path):
    path = tmp_path / "static.onnx"
    export_onnx(ResidualBNNet(), (image(2),), path, dynamic_batch=False)
    (graph_input,) = onnx.load(str(path)).graph.input
    assert graph_input.type.tensor_type.shape.dim[0].dim_value == 2


def test_training_flags_are_restored(tmp_path):
    model = ResidualBNNet().train()
    model.head.eval()
    export_onnx(model, (image(),), tmp_path / "m.onnx")
    assert model.training and model.stem.training and not model.head.training


# ----------------------------------------------------------------------------- failures


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and len(message) < 600, message
    for fragment in fragments:
        assert fragment in message, message


def test_unsupported_op_names_the_model_and_the_op(tmp_path):
    path = tmp_path / "histc.onnx"
    with pytest.raises(ExportError) as error:
        export_onnx(HistogramNet(), (image(),), path)
    assert_one_line(error, "HistogramNet", "histc")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_non_tensor_output_is_refused(tmp_path):
    with pytest.raises(ExportError) as error:
        export_onnx(ReturnsChannelCount(), (image(),), tmp_path / "int.onnx")
    assert_one_line(error, "ReturnsChannelCount", "int")


def test_data_dependent_branch_is_refused_not_baked(tmp_path):
    with pytest.raises(ExportError) as error:
        export_onnx(DataDependentBranch(), (image(),), tmp_path / "branch.onnx")
    assert_one_line(error, "DataDependentBranch", "torchscript", "dynamo")


def test_parity_failure_reports_the_numbers_and_keeps_old_file(tmp_path):
    path = tmp_path / "noisy.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(ExportError) as error:
        export_onnx(NoisyNet(), (image(),), path)
    assert_one_line(error, "NoisyNet", "parity", "max abs diff", "rtol=")
    assert path.read_bytes() == b"previous export"  # never replaced by a bad file
    assert [p.name for p in tmp_path.iterdir()] == ["noisy.onnx"]


def test_parity_can_be_skipped(tmp_path):
    report = export_onnx(NoisyNet(), (image(),), tmp_path / "noisy.onnx", check_parity=False)
    assert report.max_abs_diff is None and Path(report.path).is_file()


def test_model_failing_on_its_inputs(tmp_path):
    with pytest.raises(ExportError) as error:
        export_onnx(ResidualBNNet(), (torch.randn(1, 5, 8, 8),), tmp_path / "bad.onnx")
    assert_one_line(error, "ResidualBNNet", "fails on its example inputs")


def test_unknown_exporter(tmp_path):
    with pytest.raises(ExportError) as error:
        export_onnx(SENet(), (image(),), tmp_path / "m.onnx", exporter="tflite")
    assert_one_line(error, "tflite", "torchscript")


def test_report_round_trips_and_renders(tmp_path):
    from rich.console import Console

    report = export_onnx(SENet(), (image(),), tmp_path / "se.onnx")
    assert ExportReport.from_json(report.to_json()) == report
    console = Console(width=120, record=True)
    console.print(report)
    text = console.export_text()
    assert "torchscript" in text and "se.onnx" in text
