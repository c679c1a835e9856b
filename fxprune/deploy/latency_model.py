"""What the layer table does not see: whole-model latency from the table, the activations
and a per-run overhead, calibrated on the real model.

The table (``latency_table``) times every conv/linear layer alone. A whole model also
runs the work between them (BN/activation/add when not fused, pooling, layout reorders),
proportional to the activations those layers write, and pays a per-run overhead. Its
latency in milliseconds at widths ``w`` is modelled as

    ms(w) = scale * T(w) + act_ms * A(w) + overhead

* ``T(w)``: the table's sum over conv/linear layers at their kept widths;
* ``A(w)``: the elements those layers write, in millions (``N * C_out * H_out * W_out``);
* ``overhead``: per run, outside the kernels.

**Calibration** from one profiled run set of the dense model (onnxruntime's per-node
profiler, ``layer_profile.op_breakdown``): its time splits into conv/linear kernels,
the other kernels (the work between layers) and the time outside kernels (per run).
Each share of the dense model's time ``D`` is given to its term: ``scale`` makes the
table's dense sum the layers' share, ``act_ms`` makes the dense activations the other
kernels' share, ``overhead`` is the rest. A profile's *shares* hold under load that
inflates every kernel alike; a residual ``D - T(dense)`` does not (on a loaded shared
machine the dense run took 7.6x the table's sum of least-disturbed layer timings, a gap
that is load, not activations). Without a profile (non-CPU providers), the
residual is the fallback: given to the activations (``scale = 1``) when positive, to the
table's scale when negative. Without a dense timing at all (a stubbed runtime) the model
is the table alone.

The model sets the correction loop's first budget; misses are corrected on the budget
(``latency_target._next_budget``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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

    @classmethod
    def calibrate(cls, table_dense: float, acts_dense: float, dense_ms: float | None = None,
                  overhead: float = 0.0, layer_share: float | None = None,
                  activation_share: float | None = None) -> LatencyModel:  # fmt: skip
        """The model from the dense model's timing ``dense_ms`` and, when profiled, the
        shares of it in conv/linear kernels and in the other kernels (see module doc)."""
        if dense_ms is None or dense_ms <= 0 or table_dense <= 0:
            return cls(table_dense, acts_dense, table_dense)
        if layer_share is not None and activation_share is not None and layer_share > 0:
            act_ms = dense_ms * activation_share / acts_dense if acts_dense > 0 else 0.0
            rest = max(0.0, 1.0 - layer_share - (activation_share if acts_dense > 0 else 0.0))
            model = cls(table_dense, acts_dense, dense_ms, dense_ms * rest, dense_ms * layer_share / table_dense,
                        act_ms, True)  # fmt: skip
        else:
            overhead = min(max(overhead, 0.0), 0.5 * dense_ms)
            residual = dense_ms - overhead - table_dense
            if residual >= 0 and acts_dense > 0:
                model = cls(table_dense, acts_dense, dense_ms, overhead, 1.0, residual / acts_dense, True)
            else:
                model = cls(table_dense, acts_dense, dense_ms, overhead, (dense_ms - overhead) / table_dense, 0.0, True)
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

    def to_dict(self) -> dict[str, Any]:
        return {"dense_ms": round(self.dense_ms, 3), "table_dense_ms": round(self.table_dense, 3),
                "activations_M": round(self.acts_dense, 3), "overhead_ms": round(self.overhead, 4),
                "scale": round(self.scale, 4), "act_ms_per_M": round(self.act_ms, 5),
                "calibrated": self.calibrated}  # fmt: skip


LAYER_KERNELS = ("conv", "depthwise", "grouped", "gemm")  # op_breakdown categories the table times


def profile_shares(breakdown) -> dict[str, float]:
    """``calibrate``'s keywords from a dense ``layer_profile.OpBreakdown``: its run time
    and the shares of it in conv/linear kernels, in other kernels, and outside kernels."""
    layers = sum(c["ms"] for k, c in breakdown.by_category.items() if k.startswith(LAYER_KERNELS))
    others = breakdown.kernel_ms - layers
    total = max(breakdown.kernel_ms + breakdown.gap_ms, 1e-9)
    return {"dense_ms": breakdown.run_ms, "overhead": breakdown.gap_ms,
            "layer_share": layers / total, "activation_share": others / total}  # fmt: skip


__all__ = ["LAYER_KERNELS", "LatencyModel", "profile_shares"]
