"""How the gates learn: the cost gradient split between units and sections
(``scale_grad``), the gates' optimizer with cost-scaled learning rates, carried over when
structure is removed, and batch-norm recalibration with the gates rounded."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from fxprune.cost.expected import ExpectedCost
from fxprune.train.gates import GateBank
from fxprune.train.options import TrainPruneOptions
from fxprune.train.state import PruningState


def scale_grad(t: torch.Tensor, scale: float) -> torch.Tensor:
    """Value ``t``, gradient multiplied by ``scale``."""
    return t * scale + t.detach() * (1.0 - scale)


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
    regulariser's gradient, which sets the gates' learning rates (see ``gate_optimizer``)."""
    theta = torch.ones(cost.num_units, dtype=torch.float64, requires_grad=True)
    zeta = torch.ones(cost.num_sections, dtype=torch.float64, requires_grad=True)
    macs, params = cost(theta, zeta)
    (alpha * macs / macs0 + (1 - alpha) * params / params0).backward()
    unit = float(theta.grad.mean()) if cost.num_units else 1.0
    section = float(zeta.grad.mean()) if cost.num_sections else 1.0
    return max(unit, 1e-12), max(section, 1e-12)


def gate_optimizer(
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


def index_maps(state: PruningState, before_units: list[int], before_sections: list[str]):
    pos_u = {u: i for i, u in enumerate(before_units)}
    pos_s = {k: i for i, k in enumerate(before_sections)}
    unit_map = np.array(
        [pos_u.get(int(state.orig_of_class[c]), -1) for c in state.units], dtype=np.int64
    )
    section_map = np.array([pos_s.get(s.key, -1) for s in state.gated_sections], dtype=np.int64)
    return unit_map, section_map


__all__ = ["gate_optimizer", "index_maps", "marginal_costs", "recalibrate_batchnorm",
           "scale_grad"]
