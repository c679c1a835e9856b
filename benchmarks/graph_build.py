"""fxprune vs Torch-Pruning on torchvision models, timed side by side in one run.

For each model (``weights=None``, eval mode, input 1x3x224x224, 2 threads), each tool works
on its own fresh deep copy and every number is the median of ``--repeats`` runs:

* graph:  fxprune ``analyze`` (fx trace, shape propagation on meta tensors = no forward
          pass, channel graph; no copy), as timed inside ``fxprune.prune``; Torch-Pruning
          ``DependencyGraph().build_dependency`` (in place, no copy; it runs a forward pass).
* total:  fxprune analyze + score + slim (``sum(result.seconds.values())``; the MAC counts
          ``prune`` also reports are left out); Torch-Pruning ``MagnitudePruner`` (L1
          importance, ratio 0.5, final classifier ignored) construction + ``step()``.

The two tools do not prune the same channels (fxprune ranks globally with
``min_ratio=0.15``; the Torch-Pruning pruner cuts 50% of every layer by default), so the
table compares the cost of the pipelines, not the pruned models. Each tool gets one untimed
warm-up run per model (oneDNN builds kernels for new conv shapes on first use), and the
runs of the two tools alternate so that changing load on a shared machine hits both
alike. "ok" means the pruned model ran on the input and gave the dense output shape.
Torch-Pruning failures are caught and shown as ``failed: <message>``.

    python benchmarks/graph_build.py
    python benchmarks/graph_build.py --models resnet18,vit_b_16 --repeats 1 --json out.json
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import torchvision
import typer
from rich.console import Console
from rich.table import Table
from torch import nn

import fxprune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import first_line

DEFAULT_MODELS = [
    "resnet18", "resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0",
    "regnet_x_400mf", "shufflenet_v2_x1_0", "convnext_tiny", "vit_b_16", "googlenet",
]


@dataclass
class ToolTiming:
    """Median seconds of one tool on one model; ``error`` is set when the tool failed."""

    graph_s: float | None = None
    total_s: float | None = None
    output: str | None = None  # "ok", "wrong shape ..." or "crashed: ..."
    error: str | None = None


@dataclass
class ModelRow:
    model: str
    params: int
    ours: ToolTiming = field(default_factory=ToolTiming)
    torch_pruning: ToolTiming = field(default_factory=ToolTiming)

    def speedup(self, attr: str) -> float | None:
        ours, theirs = getattr(self.ours, attr), getattr(self.torch_pruning, attr)
        if ours is None or theirs is None or ours <= 0:
            return None
        return theirs / ours


def final_classifier(model: nn.Module) -> nn.Module:
    """The last Linear layer in module order (every model in DEFAULT_MODELS ends in one)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


def check_output(model: nn.Module, x: torch.Tensor, dense_shape: torch.Size) -> str:
    """Return "ok" when the pruned model runs on ``x`` and gives the dense output shape."""
    try:
        with torch.no_grad():
            shape = tuple(model.eval()(x).shape)
    except Exception as exc:  # noqa: BLE001 - any crash of the pruned model is a result
        return f"crashed: {first_line(exc)}"
    return "ok" if shape == tuple(dense_shape) else f"wrong shape {shape}"


def run_ours(model: nn.Module, x: torch.Tensor) -> tuple[float, float, nn.Module]:
    """(analyze seconds, analyze + score + slim seconds, slim model)."""
    result = fxprune.prune(copy.deepcopy(model), x, ratio=0.5, scorer="l1")
    return result.seconds["analyze"], sum(result.seconds.values()), result.model


def run_tp_graph(model: nn.Module, x: torch.Tensor) -> float:
    import torch_pruning as tp

    owned = copy.deepcopy(model)
    t0 = time.perf_counter()
    tp.DependencyGraph().build_dependency(owned, example_inputs=x)
    return time.perf_counter() - t0


def run_tp_total(model: nn.Module, x: torch.Tensor) -> tuple[float, nn.Module]:
    import torch_pruning as tp

    owned = copy.deepcopy(model)
    t0 = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        owned, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
        ignored_layers=[final_classifier(owned)],
    )
    pruner.step()
    return time.perf_counter() - t0, owned


class Runs:
    """Timings of one tool on one model; the first run of every tool is a warm-up (oneDNN
    builds its kernels for new conv shapes on first use) and is left out of the median."""

    def __init__(self) -> None:
        self.graph_s: list[float] = []
        self.total_s: list[float] = []
        self.pruned: nn.Module | None = None
        self.error: str | None = None

    def record(self, fn: Callable[[], tuple[float | None, float | None, nn.Module | None]]) -> None:
        if self.error is not None:
            return
        try:
            graph_s, total_s, pruned = fn()
        except Exception as exc:  # noqa: BLE001 - a benchmark reports failures, never stops
            self.error = first_line(exc)
            return
        if graph_s is not None:
            self.graph_s.append(graph_s)
        if total_s is not None:
            self.total_s.append(total_s)
        self.pruned = pruned if pruned is not None else self.pruned

    def summary(self, x: torch.Tensor, dense_shape: torch.Size) -> ToolTiming:
        if self.error is not None:
            return ToolTiming(error=self.error)
        return ToolTiming(statistics.median(self.graph_s[1:]), statistics.median(self.total_s[1:]),
                          check_output(self.pruned, x, dense_shape))


def benchmark_model(name: str, repeats: int) -> ModelRow:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        dense_shape = model(x).shape
    ours, theirs = Runs(), Runs()
    # interleaved, so that a change in machine load hits both tools alike
    for _ in range(repeats + 1):
        ours.record(lambda: run_ours(model, x))
        theirs.record(lambda: (run_tp_graph(model, x), None, None))
        theirs.record(lambda: (None, *run_tp_total(model, x)))
    return ModelRow(name, sum(p.numel() for p in model.parameters()),
                    ours.summary(x, dense_shape), theirs.summary(x, dense_shape))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _ok(timing: ToolTiming) -> str:
    return f"failed: {timing.error}" if timing.error is not None else str(timing.output)


def render(rows: list[ModelRow], repeats: int) -> Table:
    table = Table(title=f"graph build and prune+slim, 1x3x224x224, "
                        f"{torch.get_num_threads()} threads, median of {repeats}")
    for header in ("model", "ours graph s", "TP graph s", "graph speed-up", "ours total s",
                   "TP total s", "total speed-up", "ours output", "TP output"):
        table.add_column(header, justify="left" if "output" in header or header == "model"
                         else "right")
    for r in rows:
        table.add_row(r.model, _seconds(r.ours.graph_s), _seconds(r.torch_pruning.graph_s),
                      _ratio(r.speedup("graph_s")), _seconds(r.ours.total_s),
                      _seconds(r.torch_pruning.total_s), _ratio(r.speedup("total_s")),
                      _ok(r.ours), _ok(r.torch_pruning))
    return table


def main(
    models: Annotated[str, typer.Option(help="Comma-separated torchvision model names.")]
    = ",".join(DEFAULT_MODELS),
    repeats: Annotated[int, typer.Option(help="Runs per tool and model; the median is shown.")]
    = 3,
    threads: Annotated[int, typer.Option(help="torch.set_num_threads value.")] = 2,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the numbers "
                                                   "to this JSON file.")] = None,
) -> None:
    """Time fxprune and Torch-Pruning side by side on torchvision models."""
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    console = Console(width=160)
    rows = []
    for name in models.split(","):
        console.log(f"benchmarking {name}")
        rows.append(benchmark_model(name.strip(), repeats))
    console.print(render(rows, repeats))
    if json_path is not None:
        payload = {"threads": threads, "repeats": repeats, "input_shape": [1, 3, 224, 224],
                   "torch": torch.__version__, "rows": [
                       {**asdict(r), "graph_speedup": r.speedup("graph_s"),
                        "total_speedup": r.speedup("total_s")} for r in rows]}
        json_path.write_text(json.dumps(payload, indent=1))
        console.log(f"wrote {json_path}")


if __name__ == "__main__":
    typer.run(main)
