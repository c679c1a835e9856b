"""What the layer table does not see: whole-model latency from the table, the activations
and a per-run overhead, calibrated on the real model.

The table (``latency_table``) times every conv/linear layer alone. A whole model also
runs the work between them (BN/activation/add when not fused, pooling, layout reorders),
proportional to the activations those layers write, and pays a per-run overhead. Its
latency in milliseconds at widths ``w`` is modelled as

    ms(w) = scale * T(w) + act_ms * A(w) + overhead

* ``T(w)``: the table's sum over conv/linear layers at their kept widths;
* ``A(w)``: the elements those layers write, in millions (``N * C_out * H_out * W_out``);
* ``overhead``: one ``session.run`` of a trivial model on the same input.

**Calibration** from one timing ``D`` of the dense model: the residual
``D - overhead - T(dense)``, when positive, is attributed to the activations
(``act_ms = residual / A(dense)``, ``scale = 1``); when the table is pessimistic (a
negative residual) the table is scaled instead (``scale = (D - overhead) / T(dense)``).
Without a dense timing (a stubbed runtime) the model is the table alone.

**Refit**: every slim model measured adds a point (its measured fraction times ``D``);
``(scale, act_ms)`` are refitted by non-negative least squares on the relative error
over all points, the dense one included, so the correction loop's next budget comes from
a model that has seen the runtime's answers, not from a secant on the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LatencyModel:
    """``ms = scale * table_ms + act_ms * activations_M + overhead`` (see module doc)."""

    table_dense: float  # T(dense), ms
    acts_dense: float  # A(dense), millions of elements
    dense_ms: float  # D: the dense model's measured latency (T(dense) without a timing)
    overhead: float = 0.0
    scale: float = 1.0
    act_ms: float = 0.0  # ms per million activation elements
    calibrated: bool = False  # from a real dense timing
    points: list[tuple[float, float, float]] = field(default_factory=list)  # (T, A, measured ms)

    @classmethod
    def calibrate(cls, table_dense: float, acts_dense: float, dense_ms: float | None,
                  overhead: float = 0.0) -> LatencyModel:  # fmt: skip
        """Attribute the dense model's residual over the table (see module doc)."""
        if dense_ms is None or dense_ms <= 0 or table_dense <= 0:
            return cls(table_dense, acts_dense, table_dense)
        overhead = min(max(overhead, 0.0), 0.5 * dense_ms)
        residual = dense_ms - overhead - table_dense
        if residual >= 0 and acts_dense > 0:
            model = cls(table_dense, acts_dense, dense_ms, overhead, 1.0, residual / acts_dense, True)
        else:
            model = cls(table_dense, acts_dense, dense_ms, overhead, (dense_ms - overhead) / table_dense, 0.0, True)
        model.points.append((table_dense, acts_dense, dense_ms))
        return model

    # ---- predictions
    def ms(self, table_ms: float, acts: float) -> float:
        return self.scale * table_ms + self.act_ms * acts + self.overhead

    def fraction(self, table_ms: float, acts: float) -> float:
        """Predicted slim / dense latency."""
        return self.ms(table_ms, acts) / self.ms(self.table_dense, self.acts_dense)

    def selector_budget(self, goal: float) -> float:
        """The fraction of ``scale * T + act_ms * A`` at dense (what the selector budgets)
        that leaves the whole model at ``goal`` of dense once the overhead is added."""
        variable = self.scale * self.table_dense + self.act_ms * self.acts_dense
        whole = variable + self.overhead
        return float(min(1.0, max(1e-3, (goal * whole - self.overhead) / max(variable, 1e-12))))

    # ---- learning from measurements
    def add(self, table_ms: float, acts: float, measured_fraction: float) -> None:
        """One measured slim model; refits when there are two points or more."""
        if not self.points:  # no dense timing: the model's own dense is the reference
            self.points.append((self.table_dense, self.acts_dense, self.ms(self.table_dense, self.acts_dense)))
        self.points.append((table_ms, acts, measured_fraction * self.points[0][2]))
        self.refit()

    def refit(self) -> None:
        from scipy.optimize import nnls

        if len(self.points) < 2:
            return
        rows = np.array([[t, a] for t, a, _ in self.points], dtype=np.float64)
        ys = np.array([y for _, _, y in self.points], dtype=np.float64)
        weights = 1.0 / np.maximum(ys, 1e-9)  # relative error: a slim model counts like dense
        scale_cols = np.maximum(np.abs(rows).max(axis=0), 1e-12)  # columns of comparable size
        solution, _ = nnls((rows * weights[:, None]) / scale_cols, (ys - self.overhead) * weights)
        scale, act_ms = solution / scale_cols
        if scale <= 0 and act_ms <= 0:
            return
        self.scale, self.act_ms = float(scale), float(act_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"dense_ms": round(self.dense_ms, 3), "table_dense_ms": round(self.table_dense, 3),
                "activations_M": round(self.acts_dense, 3), "overhead_ms": round(self.overhead, 4),
                "scale": round(self.scale, 4), "act_ms_per_M": round(self.act_ms, 5),
                "calibrated": self.calibrated, "points": len(self.points)}  # fmt: skip


def overhead_ms(input_shape: tuple[int, ...], providers: list[str], threads: int | None, runs: int = 30) -> float:
    """Median ``session.run`` time (ms) of a one-Relu model on an input of ``input_shape``:
    the per-run cost (feed copy, dispatch) that no width change removes."""
    import time

    from onnx import TensorProto, helper

    from .runtime import open_session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "overhead", [x], [y])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    session = open_session(onnx_model.SerializeToString(), providers, threads)
    feed = {"x": np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        tick = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - tick) * 1e3)
    return float(np.median(times))


__all__ = ["LatencyModel", "overhead_ms"]
