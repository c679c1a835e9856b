"""What complexity-aware training returns: per-epoch records, the history of the keep
probabilities, and the result (slim model, plan, figures) that renders itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import fx

from fxprune.cost import SizeChange
from fxprune.plan import PrunePlan


@dataclass
class EpochRecord:
    epoch: int  # counted from 1
    loss: float  # mean training objective
    task_loss: float
    val_accuracy: float  # gates rounded
    macs: int  # of the running (already slimmed) model, per example
    params: int
    expected_macs: float  # E[MACs] under the current probabilities
    expected_params: float
    units: int  # live gated units
    sections: int  # live residual sections
    pruned_units: int  # removed so far
    removed_sections: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainPruneHistory:
    epochs: list[EpochRecord] = field(default_factory=list)
    unit_ids: list[int] = field(default_factory=list)  # original channel class ids
    unit_groups: list[int] = field(default_factory=list)
    section_names: list[str] = field(default_factory=list)
    theta: list[list[float]] = field(default_factory=list)  # per epoch, per unit (0: removed)
    zeta: list[list[float]] = field(default_factory=list)  # per epoch, per section
    events: list[dict[str, Any]] = field(default_factory=list)  # removals

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": [r.to_dict() for r in self.epochs],
            "unit_ids": self.unit_ids,
            "unit_groups": self.unit_groups,
            "section_names": self.section_names,
            "theta": self.theta,
            "zeta": self.zeta,
            "events": self.events,
        }

    def plot(self, path) -> None:
        """PNG: MACs (running model and expected) and validation accuracy per epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r.epoch for r in self.epochs]
        fig, (ax_macs, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        ax_macs.plot(epochs, [r.macs / 1e6 for r in self.epochs], marker="o", label="running model")
        ax_macs.plot(
            epochs,
            [r.expected_macs / 1e6 for r in self.epochs],
            linestyle="--",
            label="expected (gates)",
        )
        ax_macs.set_xlabel("epoch")
        ax_macs.set_ylabel("MMACs per example")
        ax_macs.legend()
        ax_acc.plot(epochs, [100 * r.val_accuracy for r in self.epochs], marker="o", color="C2")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("validation accuracy (%)")
        for ax in (ax_macs, ax_acc):
            ax.grid(alpha=0.3)
        fig.suptitle("fxprune train-prune")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


@dataclass
class TrainPruneResult(SizeChange):
    model: fx.GraphModule
    plan: PrunePlan
    history: TrainPruneHistory
    removed_sections: list[str]
    val_accuracy: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    def summary(self) -> dict[str, Any]:
        return dict(self.plan.summary)

    def __rich__(self):
        t = self.size_table("fxprune train-prune result")
        s = self.plan.summary
        t.add_row("units", f"{s['units_before']:,}", f"{s['units_after']:,}", "")
        t.add_row(
            "sections",
            f"{s['sections_before']}",
            f"{s['sections_after']}",
            ", ".join(self.removed_sections) or "",
        )
        t.add_row("val accuracy", "", f"{self.val_accuracy:.2%}", "")
        return t


__all__ = ["EpochRecord", "TrainPruneHistory", "TrainPruneResult"]
