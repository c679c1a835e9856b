"""Profiling: provider resolution, latency stats of one ONNX file, the dense-vs-slim
ProfileReport (numbers, JSON round trip, rich table), the sweep plot, and the
``export`` / ``profile`` commands. Timing runs are tiny: behaviour, not speed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fxprune.deploy import (
    Environment,
    LatencyStat,
    ModelProfile,
    ProfileReport,
    SweepPoint,
    export_onnx,
    profile_models,
    profile_onnx,
    resolve_providers,
    sweep_plot,
)
from fxprune.errors import ConfigError, ProfileError

pytestmark = pytest.mark.onnx
pytest.importorskip("onnxruntime")

TINY_TIMING = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0}
LATENCY_HEADERS = ("Batch", "Dense p50", "Dense p90", "Slim p50", "Slim p90",
                   "Dense img/s", "Slim img/s", "Speed-up", "Efficiency")  # fmt: skip
SIZE_HEADERS = ("Model", "Params", "MACs", "MACs ↓")


def conv_net(width: int) -> nn.Module:
    """The same architecture at two widths stands in for a dense and a slim model."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    ).eval()  # fmt: skip


def example() -> tuple[torch.Tensor]:
    return (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(conv_net(8), example(), path)
    return path


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def no_gpu() -> bool:
    return not torch.cuda.is_available()


def cuda_unusable() -> str | None:
    """Why onnxruntime cannot run on CUDA here (no GPU, or a CPU-only onnxruntime build next
    to a GPU, as on images that ship plain ``onnxruntime``), or None."""
    from fxprune.deploy.runtime import gpu_problem

    return gpu_problem()


# ----------------------------------------------------------------------------- providers


def test_cpu_provider():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(" CPU ") == ["CPUExecutionProvider"]


def test_unknown_provider_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        resolve_providers("openvino")
    assert_one_line(error, "openvino", "auto, cpu, cuda")


@pytest.mark.skipif(not no_gpu(), reason="needs a machine without a GPU")
def test_auto_is_cpu_and_quiet_without_gpu(tiny_onnx, capfd):
    assert resolve_providers("auto") == ["CPUExecutionProvider"]
    profile_onnx(tiny_onnx, provider="auto", **TINY_TIMING)
    captured = capfd.readouterr()
    assert "CUDA" not in captured.err + captured.out


@pytest.mark.skipif(not no_gpu(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_provider_without_gpu_is_a_profile_error(provider):
    with pytest.raises(ProfileError) as error:
        resolve_providers(provider)
    assert_one_line(error, provider, "GPU")


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_provider_next_to_a_cpu_only_onnxruntime_is_a_profile_error(provider, monkeypatch):
    # Seen on a GPU machine whose image ships plain onnxruntime: torch sees the GPU, ORT
    # cannot use it. "auto" falls back to the CPU; asking for a GPU provider is one line.
    from fxprune.deploy import runtime

    problem = "this onnxruntime 1.30.0 build has no CUDAExecutionProvider"
    monkeypatch.setattr(runtime, "gpu_problem", lambda: problem)
    assert resolve_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ProfileError) as error:
        resolve_providers(provider)
    assert_one_line(error, provider, "no CUDAExecutionProvider", "--provider cpu")


@pytest.mark.gpu
@pytest.mark.skipif(cuda_unusable() is not None, reason=f"needs CUDA in onnxruntime: {cuda_unusable()}")
def test_cuda_provider_runs(tiny_onnx):
    assert resolve_providers("auto")[0] == "CUDAExecutionProvider"
    (stat,) = profile_onnx(tiny_onnx, provider="cuda", **TINY_TIMING)
    assert stat.median_ms > 0


# ----------------------------------------------------------------------------- profile_onnx


def test_profile_onnx_stats_per_batch_size(tiny_onnx):
    stats = profile_onnx(tiny_onnx, (1, 3), threads=1, provider="cpu", **TINY_TIMING)
    assert [stat.batch for stat in stats] == [1, 3]  # 3: not the batch size it was exported at
    for stat in stats:
        assert stat.runs >= 3
        assert 0 < stat.median_ms <= stat.p90_ms
        assert stat.mean_ms > 0
        assert stat.throughput == pytest.approx(stat.batch / (stat.median_ms / 1e3))
        assert LatencyStat.from_dict(json.loads(json.dumps(stat.to_dict()))) == stat


def test_missing_onnx_file(tmp_path):
    with pytest.raises(ProfileError) as error:
        profile_onnx(tmp_path / "nowhere.onnx", **TINY_TIMING)
    assert_one_line(error, "not found", "nowhere.onnx")


def test_corrupt_onnx_file(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe")
    with pytest.raises(ProfileError) as error:
        profile_onnx(path, provider="cpu", **TINY_TIMING)
    assert_one_line(error, "corrupt.onnx")


def test_fixed_batch_file_refuses_other_batch_sizes(tmp_path):
    path = tmp_path / "static.onnx"
    export_onnx(conv_net(4), example(), path, dynamic_batch=False)
    with pytest.raises(ProfileError) as error:
        profile_onnx(path, (4,), provider="cpu", **TINY_TIMING)
    assert_one_line(error, "fixed batch size 1", "dynamic_batch")


@pytest.mark.parametrize("batches", [(), (0,), (2, -1)])
def test_bad_batch_sizes(tiny_onnx, batches):
    with pytest.raises(ConfigError):
        profile_onnx(tiny_onnx, batches, **TINY_TIMING)


# ----------------------------------------------------------------------------- report


def made_up_report() -> ProfileReport:
    def stat(batch, median):
        return LatencyStat(batch, median, median * 1.2, median * 1.1, batch / median * 1e3, 20)

    return ProfileReport(
        dense=ModelProfile("dense", 1_000_000, 400_000_000, (stat(1, 4.0), stat(8, 20.0))),
        slim=ModelProfile("slim", 250_000, 100_000_000, (stat(1, 2.0), stat(8, 8.0))),
        environment=Environment("CPUExecutionProvider", 2, (1, 8), "1.0", "2.0", "Some CPU", None),
        sweep=(
            SweepPoint(0.0, 1_000_000, 400_000_000, 1, 4.0),
            SweepPoint(0.5, 250_000, 100_000_000, 1, 2.0),
        ),
    )


def test_report_derived_numbers():
    report = made_up_report()
    assert report.macs_reduction == pytest.approx(4.0)
    assert report.params_reduction == pytest.approx(4.0)
    assert report.speedup(1) == pytest.approx(2.0)
    assert report.speedup(8) == pytest.approx(2.5)
    assert report.efficiency(1) == pytest.approx(0.5)  # latency fell half as much as MACs
    assert report.efficiency(8) == pytest.approx(0.625)
    assert report.speedup(32) is None


def test_report_json_round_trip(tmp_path):
    report = made_up_report()
    assert ProfileReport.from_json(report.to_json()) == report
    saved = report.save(tmp_path / "out" / "report.json")
    assert ProfileReport.load(saved) == report
    summary = json.loads(saved.read_text())["summary"]
    assert summary["macs_reduction"] == pytest.approx(4.0)
    assert summary["per_batch"][1] == {"batch": 8, "speedup": 2.5, "efficiency": 0.625}


def test_report_from_bad_dict_is_a_config_error():
    with pytest.raises(ConfigError):
        ProfileReport.from_dict({"dense": {}})


def test_report_renders_a_fixed_width_table():
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(made_up_report())
    text = console.export_text()
    for header in (*SIZE_HEADERS, *LATENCY_HEADERS, "Ratio"):
        assert header in text, header
    assert "2.50×" in text and "0.62" in text and "Some CPU" in text
    assert max(len(line) for line in text.splitlines()) <= 120


def test_profile_models_dense_vs_slim(tmp_path):
    from fxprune.cost import count_macs

    dense, slim = conv_net(32), conv_net(8)
    report = profile_models(dense, slim, example(), (1, 2), 1, "cpu", tmp_path, **TINY_TIMING)
    assert (tmp_path / "dense.onnx").is_file() and (tmp_path / "slim.onnx").is_file()
    assert report.dense.params == sum(p.numel() for p in dense.parameters())
    assert report.slim.params == sum(p.numel() for p in slim.parameters())
    assert report.dense.macs == count_macs(dense, example())
    assert report.macs_reduction == pytest.approx(report.dense.macs / report.slim.macs)
    assert report.macs_reduction > 10  # width 32 -> 8: the 3x3 conv alone shrinks 16x
    assert report.batch_sizes == (1, 2)
    env = report.environment
    assert env.provider == "CPUExecutionProvider" and env.threads == 1 and env.batch_sizes == (1, 2)
    assert env.torch == torch.__version__ and env.cpu
    assert ProfileReport.from_json(report.to_json()) == report


def test_profile_models_rejects_bad_provider_before_exporting(tmp_path):
    with pytest.raises(ConfigError):
        profile_models(conv_net(4), conv_net(2), example(), (1,), None, "npu", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- sweep plot


def test_sweep_plot_writes_a_png(tmp_path):
    path = sweep_plot([(0.5, 2e6, 1.5), (0.0, 4e6, 3.0), (0.75, 1e6, 1.1)], tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep_plot(made_up_report().sweep, tmp_path / "points.png").stat().st_size > 1000


@pytest.mark.parametrize("records", [[], [(0.5, 1.0)], [("half", 1, 2)]])
def test_sweep_plot_bad_records(tmp_path, records):
    with pytest.raises(ConfigError):
        sweep_plot(records, tmp_path / "sweep.png")
    assert not (tmp_path / "sweep.png").exists()


# ----------------------------------------------------------------------------- commands

MODEL_FILE = """
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )

def example_inputs():
    return (torch.randn(1, 3, 16, 16),)
"""


@pytest.fixture
def cli(tmp_path):
    """The two commands registered the way the main app does, plus a model file."""
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from fxprune.cli.deploy import export_command, profile_command

    app = typer.Typer()
    app.command("export")(export_command)
    app.command("profile")(profile_command)
    model_file = tmp_path / "net.py"
    model_file.write_text(textwrap.dedent(MODEL_FILE))

    def invoke(*args: str):
        return CliRunner().invoke(app, [str(arg) for arg in args])

    return invoke, str(model_file)


def test_export_command_writes_checked_onnx(cli, tmp_path):
    invoke, model = cli
    out = tmp_path / "net.onnx"
    result = invoke("export", model, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "torchscript" in result.output


def test_export_command_takes_a_slim_directory(cli, tmp_path):
    import fxprune

    invoke, _ = cli
    slim_dir = tmp_path / "slim"
    fxprune.save_slim(torch.fx.symbolic_trace(conv_net(4)), slim_dir, example())
    result = invoke("export", slim_dir, "-o", tmp_path / "slim.onnx", "--input-shape", "2,3,16,16")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "slim.onnx").is_file()


def test_profile_command_with_ratio_and_sweep(cli, tmp_path):
    invoke, model = cli
    report_path, plot_path = tmp_path / "report.json", tmp_path / "sweep.png"
    result = invoke(
        "profile", model, "--ratio", "0.5", "--batch", "1,2", "--threads", "1", "--provider", "cpu",
        "--scorer", "l1", "--min-seconds", "0", "--json", report_path,
        "--sweep", "0.25,0.5", "--plot", plot_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = ProfileReport.load(report_path)
    assert report.slim.params < report.dense.params
    assert [point.ratio for point in report.sweep] == [0.0, 0.25, 0.5]
    assert plot_path.read_bytes()[:4] == b"\x89PNG"
    assert "Latency" in result.output and "Sweep" in result.output


def test_profile_command_with_slim_directory(cli, tmp_path):
    import fxprune

    invoke, model = cli
    dense = fxprune.loading.load_model(model)[0]
    result = fxprune.prune(dense, example(), ratio=0.5, scorer="l1")
    fxprune.save_slim(result.model, tmp_path / "slim", example())
    out = invoke("profile", model, "--slim", tmp_path / "slim", "--batch", "1",
                 "--provider", "cpu", "--min-seconds", "0")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "slim:" in out.output and "Latency" in out.output


@pytest.mark.parametrize(
    "args, error_type, fragment",
    [
        (("--slim", "x", "--ratio", "0.5"), ConfigError, "not both"),
        ((), ConfigError, "nothing to compare"),
        (("--ratio", "0.5", "--plot", "p.png"), ConfigError, "--plot needs --sweep"),
        (("--ratio", "0.5", "--batch", "1,x"), ConfigError, "--batch"),
        (("--sweep", "0.5,1.5"), ConfigError, "--sweep"),
        (("--ratio", "0.5", "--provider", "tpu"), ConfigError, "tpu"),
    ],
)
def test_profile_command_user_errors(cli, args, error_type, fragment):
    invoke, model = cli
    result = invoke("profile", model, *args)
    assert isinstance(result.exception, error_type), result.output
    assert fragment in str(result.exception) and "\n" not in str(result.exception)
