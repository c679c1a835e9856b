"""Complexity-aware training: prune channels and whole residual sections while training.

    >>> result = fxprune.train_prune(model, x, train_loader, val_loader,
    ...                              gamma=0.5, beta=0.5, alpha=0.5, epochs=30)
    >>> result.model       # plain, deterministic, physically smaller GraphModule
    >>> result.plan        # PrunePlan; removed sections under settings["removed_sections"]
    >>> result.history     # theta trajectories, MACs/params and accuracy per epoch

After Guenter & Sideris, "Complexity-Aware Training of Deep Neural Networks for Optimal
Structure Discovery" (arXiv:2411.09127); the design decisions are ours:

Gates
    Every non-frozen channel class of the ``ChannelGraph`` (a unit) and every residual
    section (``gates.find_sections``) is scaled by ``xi ~ Bern(theta)``. Each training step
    draws fresh gates; ``theta`` gets gradients through ``xi + theta - theta.detach()``, is
    updated by SGD with momentum and projected back to [0, 1]. Where the gates multiply:
    ``gates.py``. Evaluation uses ``theta`` rounded.

Cost
    ``loss = task + gamma * [(1 - beta) C_unit + beta C_layer] + weight_decay / 2 * L2``,
    ``C = alpha E[MACs]/MACs_0 + (1 - alpha) E[params]/params_0`` with the exact expected
    values of ``expected_cost.py``. ``C_unit`` is ``C`` with the section probabilities held
    constant (its gradient reaches unit gates only) and ``C_layer`` the converse, so
    ``beta`` splits the pressure between units and layers. ``beta = 0`` trains no section
    gates (no layer is ever removed), ``beta = 1`` no unit gates.

Automatic regularisation (no per-layer knob)
    * the regulariser weight of each structure is its exact marginal normalised cost,
      ``dC/dtheta_j``: a channel of a wide, high-resolution layer is pushed harder than
      one of a cheap layer, a section in proportion to everything inside it;
    * the gates' learning rate is ``theta_lr`` divided by the mean marginal cost of their
      kind (units, sections) on the dense network, so a structure of average cost that
      is useless to the task loses about ``gamma * theta_lr`` (times ``1 - beta`` or
      ``beta``) of probability per step whatever the network's size, while the relative
      magnitudes, which make the training complexity-aware, are kept (Adam would
      equalise them; on ResNet-20/digits it pruned later and less evenly);
    * weight decay acts on the weights the sampled network uses:
      ``L2 = E[||xi * W||^2]``, so each weight element is decayed with
      ``weight_decay * P(alive)`` (the product of the probabilities of the unit(s) and
      section(s) that own it). Weights of a structure on its way out are no longer
      shrunk, so a revived structure has not been destroyed meanwhile, and the same term
      adds ``weight_decay / 2 * ||W_j||^2`` to the pressure on ``theta_j``.

Pruning
    ``theta`` is frozen at ``theta_init`` for ``warmup_epochs`` (the weights learn before
    they are judged), then checked ``checks_per_epoch`` times per epoch. A structure whose
    probability stays below ``threshold`` for ``patience`` consecutive checks is removed
    for good: the running model is slimmed (``slim``) and dead sections are cut out of the
    graph (add -> skip operand, dead code eliminated), then the new graph is re-traced and
    re-analysed and gates and costs are rebuilt on it, so later steps are cheaper. The
    last channel of every layer dimension is never removed; when every unit of a group
    that lives inside a section dies (its branch is cut), the section is removed instead
    (only when section gates are trained, ``beta > 0``). SGD momentum restarts after a
    removal; the gates' momenta are carried over. Optionally, for the
    last ``settle_epochs`` the gates are rounded and removed and the final structure
    trains deterministically (off by default: on ResNet-20/digits it did not help).

Evaluation and end
    Validation uses the gates rounded (``theta >= 0.5`` keeps). Before each evaluation
    the batch-norm statistics are re-estimated on a few training batches with those
    rounded gates (``recalibration_batches``): during training a norm behind a gated layer
    sees a mixture over sampled gate patterns, not the deterministic network (without
    this, ResNet-20 on digits read 76% instead of 98%). At the end the gates are rounded;
    gates of 1 are the identity and gates of 0 are removed by the same surgery, so the
    result is a plain deterministic GraphModule (no gate nodes) computing the rounded
    gated network, with its norm statistics re-estimated over one training epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, DataError
from .expected_cost import ExpectedCost, build_expected_cost
from .cost import macs_report
from .gates import GateBank, Section, build_gated_module, find_sections, remove_sections
from .analysis import ChannelGraph
from .ops import build_channel_graph
from .plan import PrunePlan, make_plan
from .surgery import kept_indices, slim
from .trace import as_input_tuple, trace_model


# ------------------------------------------------------------------------------ config
def check_tradeoff(gamma: float, beta: float, alpha: float) -> None:
    """The three user parameters: ``gamma >= 0``, ``beta`` and ``alpha`` in [0, 1]."""
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ConfigError(f"gamma (pruning strength) must be a finite number >= 0, got {gamma!r}")
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ConfigError(f"beta (layer vs unit pruning) must be in [0, 1], got {beta!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha (MACs vs params) must be in [0, 1], got {alpha!r}")


@dataclass(frozen=True)
class TrainPruneOptions:
    """Everything but the three trade-off parameters, epochs and learning rate."""

    momentum: float = 0.9
    weight_decay: float = 5e-4
    theta_lr: float = 0.01
    theta_optimizer: str = "sgd"  # "sgd" (cost-scaled learning rate) or "adam"
    theta_init: float = 1.0
    warmup_epochs: int | None = None  # None: a tenth of the epochs, at least 1
    settle_epochs: int = 0  # last epochs trained with the final, rounded structure
    threshold: float = 0.05
    patience: int = 3
    checks_per_epoch: int = 2
    recalibration_batches: int = 10  # BN statistics re-estimated with rounded gates before eval
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0 or self.theta_lr <= 0:
            raise ConfigError("weight_decay must be >= 0 and theta_lr > 0")
        if self.theta_optimizer not in ("sgd", "adam"):
            raise ConfigError(
                f"theta_optimizer must be 'sgd' or 'adam', got {self.theta_optimizer!r}"
            )
        if not 0.0 < self.theta_init <= 1.0:
            raise ConfigError(f"theta_init must be in (0, 1], got {self.theta_init!r}")
        if not 0.0 < self.threshold < 0.5:
            raise ConfigError(f"threshold must be in (0, 0.5), got {self.threshold!r}")
        if self.recalibration_batches < 0:
            raise ConfigError("recalibration_batches must be >= 0")
        if self.patience < 1 or self.checks_per_epoch < 1:
            raise ConfigError("patience and checks_per_epoch must be >= 1")
        for name in ("warmup_epochs", "settle_epochs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value!r}")

    def warmup(self, epochs: int) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(max(1, epochs // 10), max(0, epochs - 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainPruneOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------- results
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
class TrainPruneResult:
    model: fx.GraphModule
    plan: PrunePlan
    history: TrainPruneHistory
    removed_sections: list[str]
    val_accuracy: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    @property
    def macs_reduction(self) -> float:
        return self.macs_before / max(1, self.macs_after)

    @property
    def param_reduction(self) -> float:
        return self.params_before / max(1, self.params_after)

    def summary(self) -> dict[str, Any]:
        return dict(self.plan.summary)

    def __rich__(self):
        from rich.table import Table

        t = Table(title="fxprune train-prune result")
        t.add_column("")
        t.add_column("dense", justify="right")
        t.add_column("slim", justify="right")
        t.add_column("reduction", justify="right")
        t.add_row(
            "params",
            f"{self.params_before:,}",
            f"{self.params_after:,}",
            f"{self.param_reduction:.2f}x",
        )
        t.add_row(
            "MACs", f"{self.macs_before:,}", f"{self.macs_after:,}", f"{self.macs_reduction:.2f}x"
        )
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


# ----------------------------------------------------------------------- running state
def _scale_grad(t: torch.Tensor, scale: float) -> torch.Tensor:
    """Value ``t``, gradient multiplied by ``scale``."""
    return t * scale + t.detach() * (1.0 - scale)


class PruningState:
    """The running model: its channel graph, gates, cost polynomials and bookkeeping.

    Units are identified across re-analyses by their class id in the ORIGINAL graph
    (``orig_of_class``), sections by their add node's name.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: tuple,
        *,
        learn_units: bool = True,
        learn_sections: bool = True,
        theta_init: float = 1.0,
    ):
        self.inputs = example_inputs
        self.learn_units = learn_units
        self.learn_sections = learn_sections
        self.theta_init = theta_init
        gm = trace_model(model, example_inputs)
        self.original = build_channel_graph(gm)
        self.original_sections = find_sections(self.original.gm)
        self.removed: list[Section] = []
        self.theta_of: dict[int, float] = {}  # original class id -> probability
        self.zeta_of: dict[str, float] = {}  # section key -> probability
        self.below_units: dict[int, int] = {}  # consecutive checks below the threshold
        self.below_sections: dict[str, int] = {}
        # the running copy: slim needs a graph whose gm it may deep-copy, so analyse anew
        running = build_channel_graph(trace_model(self.original.gm, example_inputs))
        running.gm.train(model.training)
        self._install(running, np.arange(running.num_classes))
        self.initial_units = [int(c) for c in self.orig_of_class[self.units]]
        self.initial_unit_groups = [int(self.graph.class_group[c]) for c in self.units]
        self.initial_sections = list(self.sections)
        self.initial_prunable = self.prunable_channels()

    # -- building -----------------------------------------------------------------------
    def _install(self, graph: ChannelGraph, orig_of_class: np.ndarray) -> None:
        self.graph = graph
        self.orig_of_class = orig_of_class
        self.units = (
            np.flatnonzero(~graph.class_frozen) if self.learn_units else np.zeros(0, dtype=np.int64)
        )
        self.unit_of_class = np.full(graph.num_classes, -1, dtype=np.int64)
        self.unit_of_class[self.units] = np.arange(len(self.units))
        self.sections = find_sections(graph.gm)
        self.gated_sections = self.sections if self.learn_sections else []
        theta = torch.tensor(
            [self.theta_of.get(int(orig_of_class[c]), self.theta_init) for c in self.units],
            dtype=torch.float32,
        )
        zeta = torch.tensor(
            [self.zeta_of.get(s.key, self.theta_init) for s in self.gated_sections],
            dtype=torch.float32,
        )
        device = _device_of(graph.gm)
        self.gated, self.bank = build_gated_module(
            graph, self.unit_of_class, theta.to(device), self.gated_sections, zeta.to(device)
        )
        self.gated.train(graph.gm.training)
        self.cost: ExpectedCost = build_expected_cost(
            graph, self.unit_of_class, len(self.units), [s.nodes for s in self.gated_sections]
        ).to(device)
        self._inside_cache: dict[frozenset[str], np.ndarray] = {}

    @property
    def plain(self) -> fx.GraphModule:
        """The running model without gates (shares its parameters with ``gated``)."""
        return self.graph.gm

    def sync(self) -> None:
        """Store the current probabilities under their stable ids."""
        for c, t in zip(self.units, self.bank.theta.detach().cpu().tolist()):
            self.theta_of[int(self.orig_of_class[c])] = t
        for s, z in zip(self.gated_sections, self.bank.zeta.detach().cpu().tolist()):
            self.zeta_of[s.key] = z

    def live_units(self) -> int:
        return len(self.units)

    def prunable_channels(self) -> int:
        """Channel classes of the running model that could be pruned (gated or not)."""
        return int((~self.graph.class_frozen).sum())

    # -- pruning ------------------------------------------------------------------------
    def check(self, threshold: float, patience: int) -> dict[str, Any] | None:
        """One pruning check; removes what stayed below ``threshold`` ``patience`` times."""
        self.sync()
        theta = self.bank.theta.detach().cpu().numpy()
        zeta = self.bank.zeta.detach().cpu().numpy()
        dead_units = np.zeros(len(self.units), dtype=bool)
        for u, c in enumerate(self.units):
            key = int(self.orig_of_class[c])
            count = self.below_units.get(key, 0) + 1 if theta[u] < threshold else 0
            self.below_units[key] = count
            dead_units[u] = count >= patience
        dead_sections = np.zeros(len(self.gated_sections), dtype=bool)
        for i, s in enumerate(self.gated_sections):
            count = self.below_sections.get(s.key, 0) + 1 if zeta[i] < threshold else 0
            self.below_sections[s.key] = count
            dead_sections[i] = count >= patience
        return self.remove(dead_units, dead_sections)

    def round(self) -> dict[str, Any] | None:
        """Final rounding: everything below one half goes."""
        self.sync()
        theta = self.bank.theta.detach().cpu().numpy()
        zeta = self.bank.zeta.detach().cpu().numpy()
        return self.remove(theta < 0.5, zeta < 0.5)

    def _inside(self, modules: frozenset[str], nodes: frozenset[str]) -> np.ndarray:
        """Bool per class: every space carrying it belongs to the given modules/nodes."""
        key = modules | nodes
        if key in self._inside_cache:
            return self._inside_cache[key]
        g = self.graph
        attr_nodes = {n.target for n in g.gm.graph.nodes if n.op == "get_attr" and n.name in nodes}
        seen = np.zeros(g.num_classes, dtype=bool)
        outside = np.zeros(g.num_classes, dtype=bool)
        for space in g.spaces.values():
            cls = g.atom_class[space.atoms]
            within = space.owner in modules if space.kind == "module" else space.owner in attr_nodes
            (seen if within else outside)[cls] = True
        result = seen & ~outside
        self._inside_cache[key] = result
        return result

    def remove(self, dead_units: np.ndarray, dead_sections: np.ndarray) -> dict[str, Any] | None:
        """Remove the given units (bool per unit) and gated sections (bool per section)."""
        g = self.graph
        keep = np.ones(g.num_classes, dtype=bool)
        keep[self.units[dead_units]] = False
        cut = [s for s, d in zip(self.gated_sections, dead_sections) if d]
        cut_by_units = []
        if self.learn_sections:
            for s in self.gated_sections:
                if s in cut:
                    continue
                inside = self._inside(frozenset(s.modules), s.nodes)
                for group in g.groups:
                    cls = group.classes
                    if inside[cls].all() and not keep[cls].any():
                        cut_by_units.append(s)
                        break
        cut += cut_by_units
        if cut:  # what lives only inside a cut section goes with it, not through slim
            modules = frozenset(m for s in cut for m in s.modules)
            nodes = frozenset(n for s in cut for n in s.nodes)
            keep[self._inside(modules, nodes)] = True
        theta = np.ones(g.num_classes)
        theta[self.units] = self.bank.theta.detach().cpu().numpy()
        revived = []
        for space in g.spaces.values():  # never remove the last channel of a dimension
            cls = g.atom_class[space.atoms]
            if not keep[cls].any():
                candidates = np.unique(cls)
                best = int(candidates[np.argmax(theta[candidates])])
                keep[best] = True
                revived.append(best)
                self.below_units[int(self.orig_of_class[best])] = 0
        if keep.all() and not cut:
            return None
        event = {
            "units": int((~keep).sum()),
            "sections": [s.name for s in cut],
            "sections_by_units": [s.name for s in cut_by_units],
            "kept_last_channel": len(revived),
        }
        self._restructure(keep, cut)
        return event

    def _restructure(self, keep: np.ndarray, cut: list[Section]) -> None:
        g = self.graph
        self.sync()
        was_training = self.gated.training
        new = slim(g, keep)
        if cut:
            remove_sections(new, cut)
            self.removed += cut
        new.train(was_training)
        kept = kept_indices(g, keep)
        new_graph = build_channel_graph(trace_model(new, self.inputs))
        new_graph.gm.train(was_training)
        orig = np.full(new_graph.num_classes, -1, dtype=np.int64)
        for key, space in new_graph.spaces.items():
            old = g.spaces.get(key)
            if old is None:
                continue
            positions = kept.get(key, np.arange(len(old.atoms)))
            if len(positions) != len(space.atoms):
                continue
            old_classes = g.atom_class[old.atoms[positions]]
            new_classes = new_graph.atom_class[space.atoms]
            fresh = orig[new_classes] < 0
            orig[new_classes[fresh]] = self.orig_of_class[old_classes[fresh]]
        self._install(new_graph, orig)

    # -- reporting ----------------------------------------------------------------------
    def original_keep(self) -> np.ndarray:
        keep = np.zeros(self.original.num_classes, dtype=bool)
        alive = self.orig_of_class[self.orig_of_class >= 0]
        keep[alive] = True
        return keep

    def theta_snapshot(self) -> tuple[list[float], list[float]]:
        self.sync()
        alive_units = {int(self.orig_of_class[c]) for c in self.units}
        alive_sections = {s.key for s in self.sections}
        theta = [
            round(self.theta_of.get(u, self.theta_init), 4) if u in alive_units else 0.0
            for u in self.initial_units
        ]
        zeta = [
            round(self.zeta_of.get(s.key, 1.0), 4) if s.key in alive_sections else 0.0
            for s in self.initial_sections
        ]
        return theta, zeta


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


# ------------------------------------------------------------------------------ training
def _accuracy(model: nn.Module, loader: Iterable, device: torch.device) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for x, y in loader:
                out = model(x.to(device))
                correct += int((out.argmax(1) == y.to(device)).sum())
                total += int(y.numel())
    finally:
        model.train(was)
    if total == 0:
        raise DataError("the validation loader yielded no examples")
    return correct / total


def recalibrate_batchnorm(
    model: nn.Module,
    loader: Iterable,
    batches: int,
    device: torch.device,
    bank: GateBank | None = None,
) -> None:
    """Re-estimate batch-norm running statistics on ``batches`` training batches, with
    the gates of ``bank`` (if any) fixed to their rounded values.

    Why: during training a norm behind a gated layer sees a mixture over sampled gate
    patterns, which is not what the deterministic (rounded) network feeds it, so its
    running statistics are off at evaluation (the "variance shift" of dropout + BN).
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms or batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    was = model.training
    if bank is not None:
        bank.fixed = ((bank.theta.detach() >= 0.5).float(), (bank.zeta.detach() >= 0.5).float())
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        model.train()
        with torch.no_grad():
            for i, (x, _) in enumerate(loader):
                if i >= batches:
                    break
                model(x.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was)
        if bank is not None:
            bank.fixed = None


def marginal_costs(
    cost: ExpectedCost, alpha: float, macs0: float, params0: float
) -> tuple[float, float]:
    """Mean ``dC/dtheta`` over units and over sections at all-ones: the scale of the
    regulariser's gradient, which sets the gates' learning rates (see ``_gate_optimizer``)."""
    theta = torch.ones(cost.num_units, dtype=torch.float64, requires_grad=True)
    zeta = torch.ones(cost.num_sections, dtype=torch.float64, requires_grad=True)
    macs, params = cost(theta, zeta)
    (alpha * macs / macs0 + (1 - alpha) * params / params0).backward()
    unit = float(theta.grad.mean()) if cost.num_units else 1.0
    section = float(zeta.grad.mean()) if cost.num_sections else 1.0
    return max(unit, 1e-12), max(section, 1e-12)


def _gate_optimizer(
    bank: GateBank,
    options: TrainPruneOptions,
    scales: tuple[float, float],
    old: torch.optim.Optimizer | None = None,
    old_bank: GateBank | None = None,
    maps: tuple | None = None,
) -> torch.optim.Optimizer | None:
    """SGD with momentum on the keep probabilities, learning rate ``theta_lr / mean dC/dtheta``
    per kind: a structure of average cost with no use to the task loses about
    ``gamma * theta_lr`` (times its share, 1 - beta or beta) of probability per step, on
    any network size, and the magnitudes that make training complexity-aware are kept
    (Adam would equalise them). ``"adam"`` is available for comparison."""
    groups = [
        {"params": [p], "lr": options.theta_lr / (scale if options.theta_optimizer == "sgd" else 1)}
        for p, scale in ((bank.theta, scales[0]), (bank.zeta, scales[1]))
        if p.numel()
    ]
    if not groups:
        return None
    if options.theta_optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, momentum=0.9)
    else:
        opt = torch.optim.Adam(groups)
    if old is None or old_bank is None or maps is None:
        return opt
    for new_p, old_p, index in (
        (bank.theta, old_bank.theta, maps[0]),
        (bank.zeta, old_bank.zeta, maps[1]),
    ):
        state = old.state.get(old_p)
        if not state or not new_p.numel():
            continue
        idx = torch.as_tensor(np.maximum(index, 0), dtype=torch.long, device=new_p.device)
        fresh = torch.as_tensor(index < 0, device=new_p.device)
        opt.state[new_p] = {
            key: (
                value[idx].masked_fill(fresh, 0.0)
                if torch.is_tensor(value) and value.shape == old_p.shape
                else value
            )
            for key, value in state.items()
        }
    return opt


def _index_maps(state: PruningState, before_units: list[int], before_sections: list[str]):
    pos_u = {u: i for i, u in enumerate(before_units)}
    pos_s = {k: i for i, k in enumerate(before_sections)}
    unit_map = np.array(
        [pos_u.get(int(state.orig_of_class[c]), -1) for c in state.units], dtype=np.int64
    )
    section_map = np.array([pos_s.get(s.key, -1) for s in state.gated_sections], dtype=np.int64)
    return unit_map, section_map


def train_prune(
    model: nn.Module,
    example_inputs: Any,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    gamma: float = 0.5,
    beta: float = 0.5,
    alpha: float = 0.5,
    epochs: int = 30,
    lr: float = 0.1,
    options: TrainPruneOptions | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainPruneResult:
    """Train ``model`` (never modified) on a classification task while learning which
    channels and residual sections to drop; see the module docstring.

    ``gamma`` is the pruning strength, ``beta`` the share of the pressure on layers
    (sections) rather than units, ``alpha`` the share of MACs rather than parameters in
    the cost. Loaders yield ``(inputs, targets)`` batches; the loss is cross-entropy.
    """
    check_tradeoff(gamma, beta, alpha)
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive int, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"lr must be > 0, got {lr!r}")
    options = options or TrainPruneOptions()
    inputs = as_input_tuple(example_inputs)
    device = _device_of(model)
    inputs = tuple(t.to(device) for t in inputs)
    torch.manual_seed(options.seed)

    state = PruningState(
        model,
        inputs,
        learn_units=beta < 1.0,
        learn_sections=beta > 0.0,
        theta_init=options.theta_init,
    )
    macs0, params0 = state.cost.at_ones()
    dense = macs_report(state.plain, inputs)
    history = TrainPruneHistory(
        unit_ids=state.initial_units,
        unit_groups=state.initial_unit_groups,
        section_names=[s.name for s in state.initial_sections],
    )
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = 0
    check_every = max(1, steps_per_epoch // options.checks_per_epoch) if steps_per_epoch else 0
    warmup = options.warmup(epochs)
    settle_from = max(warmup, epochs - options.settle_epochs)
    total_steps = epochs * steps_per_epoch  # 0: a loader without len(), schedule per epoch

    def weight_optimizer():
        return torch.optim.SGD(
            state.plain.parameters(),
            lr=lr,
            momentum=options.momentum,
            nesterov=options.momentum > 0,
        )

    sgd = weight_optimizer()
    scales = marginal_costs(state.cost, alpha, macs0, params0)
    theta_opt = _gate_optimizer(state.bank, options, scales)
    pruned_units = 0
    step = 0

    def prune_check(where: dict[str, int], final: bool = False) -> None:
        nonlocal sgd, theta_opt, pruned_units
        old_bank, before_u = state.bank, [int(state.orig_of_class[c]) for c in state.units]
        before_s = [s.key for s in state.gated_sections]
        event = state.round() if final else state.check(options.threshold, options.patience)
        if event is None:
            return
        pruned_units += event["units"]
        history.events.append({**where, **event})
        sgd = weight_optimizer()
        theta_opt = _gate_optimizer(
            state.bank, options, scales, theta_opt, old_bank, _index_maps(state, before_u, before_s)
        )

    for epoch in range(epochs):
        started = time.perf_counter()
        if epoch == settle_from and epoch > warmup:
            # the structure is final from here on: round, remove, train it deterministically
            prune_check({"epoch": epoch + 1, "step": step, "settle": True}, final=True)
            with torch.no_grad():
                state.bank.theta.fill_(1.0)
                state.bank.zeta.fill_(1.0)
        learn_gates = warmup <= epoch < settle_from
        state.gated.train()
        sums = np.zeros(2)
        batches = 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            progress = min(1.0, step / total_steps) if total_steps else epoch / epochs
            for group in sgd.param_groups:  # cosine schedule
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * progress))
            state.bank.theta.requires_grad_(learn_gates)
            state.bank.zeta.requires_grad_(learn_gates)
            out = state.gated(x)
            task = F.cross_entropy(out, y)
            loss = task
            if learn_gates and gamma > 0:
                macs, params = state.cost(
                    _scale_grad(state.bank.theta, 1.0 - beta), _scale_grad(state.bank.zeta, beta)
                )
                loss = (
                    loss + gamma * (alpha * macs / macs0 + (1 - alpha) * params / params0).float()
                )
            if options.weight_decay:
                loss = loss + 0.5 * options.weight_decay * state.cost.l2(
                    state.bank.theta, state.bank.zeta
                )
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"training diverged: loss {float(loss)} at epoch {epoch + 1}, "
                    f"step {step}; lower the learning rate or gamma"
                )
            sgd.zero_grad(set_to_none=True)
            if theta_opt is not None:
                theta_opt.zero_grad(set_to_none=True)
            loss.backward()
            sgd.step()
            if learn_gates and theta_opt is not None:
                theta_opt.step()
                with torch.no_grad():
                    state.bank.theta.clamp_(0.0, 1.0)
                    state.bank.zeta.clamp_(0.0, 1.0)
            sums += (float(loss.detach()), float(task.detach()))
            batches += 1
            step += 1
            if learn_gates and check_every and step % check_every == 0:
                prune_check({"epoch": epoch + 1, "step": step})
        if batches == 0:
            raise DataError("the training loader yielded no batches")
        if learn_gates and not check_every:
            prune_check({"epoch": epoch + 1, "step": step})
        recalibrate_batchnorm(
            state.gated, train_loader, options.recalibration_batches, device, state.bank
        )
        accuracy = _accuracy(state.gated, val_loader, device)
        report = macs_report(state.plain, inputs)
        with torch.no_grad():
            emacs, eparams = state.cost(state.bank.theta, state.bank.zeta)
        record = EpochRecord(
            epoch=epoch + 1,
            loss=sums[0] / batches,
            task_loss=sums[1] / batches,
            val_accuracy=accuracy,
            macs=report.macs,
            params=report.params,
            expected_macs=float(emacs),
            expected_params=float(eparams),
            units=state.live_units(),
            sections=len(state.sections),
            pruned_units=pruned_units,
            removed_sections=[s.name for s in state.removed],
            seconds=time.perf_counter() - started,
        )
        history.epochs.append(record)
        theta, zeta = state.theta_snapshot()
        history.theta.append(theta)
        history.zeta.append(zeta)
        if on_epoch is not None:
            on_epoch(record)

    prune_check({"epoch": epochs, "step": step, "final": True}, final=True)
    final = slim(state.graph, state.graph.full_keep())  # a clean copy: no analysis metadata
    recalibrate_batchnorm(
        final, train_loader, max(options.recalibration_batches, steps_per_epoch), device
    )
    final.train(False)
    accuracy = _accuracy(final, val_loader, device)
    after = macs_report(final, inputs)
    settings = {
        "method": "train_prune",
        "gamma": gamma,
        "beta": beta,
        "alpha": alpha,
        "epochs": epochs,
        "lr": lr,
        **options.to_dict(),
        "removed_sections": [s.to_dict() for s in state.removed],
    }
    summary = {
        "params_before": dense.params,
        "params_after": after.params,
        "macs_before": dense.macs,
        "macs_after": after.macs,
        "param_reduction": round(dense.params / max(1, after.params), 4),
        "macs_reduction": round(dense.macs / max(1, after.macs), 4),
        "channels_before": int(state.original.num_classes),
        "channels_after": int(state.original_keep().sum()),
        "units_before": state.initial_prunable,
        "units_after": state.prunable_channels(),
        "sections_before": len(state.initial_sections),
        "sections_after": len(state.sections),
        "val_accuracy": round(accuracy, 6),
    }
    plan = _make_plan(state, settings, summary)
    return TrainPruneResult(
        final,
        plan,
        history,
        [s.name for s in state.removed],
        accuracy,
        dense.params,
        after.params,
        dense.macs,
        after.macs,
    )


def _make_plan(state: PruningState, settings: dict[str, Any], summary: dict[str, Any]) -> PrunePlan:
    """The standard plan over the ORIGINAL model; modules of removed sections are listed
    only under ``settings["removed_sections"]`` (they are gone, not narrowed)."""
    plan = make_plan(state.original, state.original_keep(), settings, summary)
    gone = {m for s in state.removed for m in s.modules}
    gone_attrs = {
        n.target
        for n in state.original.gm.graph.nodes
        if n.op == "get_attr" and any(n.name in s.nodes for s in state.removed)
    }
    plan.modules = {k: v for k, v in plan.modules.items() if k not in gone}
    plan.parameters = {k: v for k, v in plan.parameters.items() if k not in gone_attrs}
    for entry in plan.groups:
        members = entry["members"]
        owners = {state.original.spaces[m].owner for m in members}
        if owners and owners <= gone | gone_attrs:
            entry["removed_with_section"] = True
    return plan


__all__ = [
    "train_prune",
    "TrainPruneOptions",
    "TrainPruneResult",
    "TrainPruneHistory",
    "EpochRecord",
    "PruningState",
    "check_tradeoff",
]
