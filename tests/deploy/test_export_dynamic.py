"""Export: dynamic axes proven in onnxruntime, names from the model, opset errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxprune.deploy import export_onnx
from fxprune.errors import ExportError

pytestmark = pytest.mark.onnx
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class Segmenter(nn.Module):
    """Fully convolutional with a stride-2 stage and an upsample: any even H and W."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)

    def forward(self, image):
        return self.up(torch.relu(self.down(image)))


class FixedSize(nn.Module):
    """Flattens into a Linear: only the batch can change."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


class DictHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, pixels, scale):
        features = self.conv(pixels) * scale[:, :, None, None]
        return {"mask": features.sigmoid(), "logits": features.mean((2, 3))}


class TokenCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.conv = nn.Conv1d(8, 6, 3, padding=1)

    def forward(self, tokens):
        return self.conv(self.embed(tokens).transpose(1, 2)).amax(-1)


def run(path, **feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feed.items()})


def test_dynamic_all_runs_in_onnxruntime_at_another_height_and_width(tmp_path):
    torch.manual_seed(0)
    model = Segmenter().eval()
    path = tmp_path / "seg.onnx"
    report = export_onnx(model, torch.randn(1, 3, 32, 32), path, dynamic="all")
    assert report.dynamic_axes == {"image": (0, 2, 3)}  # channels stay static
    assert len(report.checked_at) == 2 and "(3, 3, 64, 64)" in report.checked_at[1]
    other = torch.randn(2, 3, 48, 80)
    (got,) = run(path, image=other)
    with torch.no_grad():
        expected = model(other)
    assert got.shape == (2, 4, 48, 80)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-3, atol=1e-4)


def test_dynamic_all_keeps_a_size_the_model_needs_static(tmp_path):
    path = tmp_path / "fixed.onnx"
    report = export_onnx(FixedSize().eval(), torch.randn(1, 3, 8, 8), path, dynamic="all")
    assert report.dynamic_axes == {"x": (0,)}
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 8, 8]


def test_dynamic_all_on_token_ids_makes_the_sequence_dynamic(tmp_path):
    path = tmp_path / "tokens.onnx"
    tokens = torch.randint(0, 50, (2, 12))
    report = export_onnx(TokenCNN().eval(), tokens, path, dynamic="all")
    assert report.dynamic_axes == {"tokens": (0, 1)}
    (got,) = run(path, tokens=torch.randint(0, 50, (3, 20)))
    assert got.shape == (3, 6)


def test_names_come_from_the_signature_and_the_dict_keys(tmp_path):
    path = tmp_path / "dict.onnx"
    report = export_onnx(DictHeads().eval(), (torch.randn(1, 3, 8, 8), torch.ones(1, 4)), path)
    assert report.input_names == ("pixels", "scale")
    assert report.output_names == ("mask", "logits")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["pixels", "scale"]
    assert [o.name for o in graph.output] == ["mask", "logits"]


def test_explicit_names_win(tmp_path):
    report = export_onnx(FixedSize().eval(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx",
                         input_names=["images"], output_names=["scores"])  # fmt: skip
    assert report.input_names == ("images",) and report.output_names == ("scores",)


@pytest.mark.parametrize("opset", [99, 3, 0])
def test_unsupported_opset_is_an_error(tmp_path, opset):
    with pytest.raises(ExportError) as error:
        export_onnx(FixedSize().eval(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", opset=opset)
    message = str(error.value)
    assert "\n" not in message and f"unsupported opset {opset}" in message and "7..23" in message
    assert list(tmp_path.iterdir()) == []


def test_torchscript_cannot_write_opset_21(tmp_path):
    with pytest.raises(ExportError, match="needs the dynamo exporter"):
        export_onnx(FixedSize(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", opset=21,
                    exporter="torchscript")  # fmt: skip


def test_progress_lines_are_reported(tmp_path):
    lines: list[str] = []
    export_onnx(Segmenter().eval(), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx",
                dynamic="all", progress=lines.append)  # fmt: skip
    assert any(line.startswith("exporting Segmenter") for line in lines)
    assert any("parity" in line for line in lines)


class RecurrentHead(nn.Module):
    """conv + GRU with sizes read from the tensor: TorchScript warns, dynamo must not fix N."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d((4, 1)))
        self.rnn = nn.GRU(8 * 4, 16, batch_first=True)

    def forward(self, x):
        f = self.conv(x)
        n, c, h, t = f.shape
        out, _ = self.rnn(f.permute(0, 3, 1, 2).reshape(n, t, c * h))
        return out


def test_a_recurrent_model_keeps_its_batch_and_time_dynamic(tmp_path, capfd):
    path = tmp_path / "crnn.onnx"
    model = torch.fx.symbolic_trace(RecurrentHead().eval())
    report = export_onnx(model, torch.randn(1, 1, 16, 20), path, dynamic="all")
    assert report.dynamic_axes == {"x": (0, 3)}  # height 16 is fixed by the GRU's input size
    (got,) = run(path, x=torch.randn(2, 1, 16, 28))
    assert got.shape == (2, 28, 16)
    assert "Traceback" not in capfd.readouterr().err  # the probes of other sizes stay quiet
