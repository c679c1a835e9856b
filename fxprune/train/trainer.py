"""Complexity-aware training: prune channels and whole residual sections while training.

    >>> result = fxprune.train_prune(model, x, train_loader, val_loader,  # doctest: +SKIP
    ...                              gamma=0.5, beta=0.5, alpha=0.5, epochs=30)
    >>> result.model       # plain, deterministic, physically smaller GraphModule  # doctest: +SKIP
    >>> result.plan        # PrunePlan; removed sections under settings["removed_sections"]  # doctest: +SKIP
    >>> result.history     # theta trajectories, MACs/params and accuracy per epoch  # doctest: +SKIP

After Guenter & Sideris, "Complexity-Aware Training of Deep Neural Networks for Optimal
Structure Discovery" (arXiv:2411.09127); the design decisions are ours:

Gates
    Every non-frozen channel class of the ``ChannelGraph`` (a unit) and every residual
    section (``gates.find_sections``) is scaled by ``xi ~ Bern(theta)``. Each training step
    draws fresh gates; ``theta`` gets gradients through ``xi + theta - theta.detach()``, is
    updated by SGD with momentum and projected back to [0, 1]. Where the gates multiply:
    ``fxprune.train.gates``. Evaluation uses ``theta`` rounded.

Cost
    ``loss = task + gamma * [(1 - beta) C_unit + beta C_layer] + weight_decay / 2 * L2``,
    ``C = alpha E[MACs]/MACs_0 + (1 - alpha) E[params]/params_0`` with the exact expected
    values of ``fxprune.cost.expected``. ``C_unit`` is ``C`` with the section probabilities held
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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.cost import macs_report
from fxprune.errors import ConfigError
from fxprune.plan import PrunePlan, make_plan
from fxprune.surgery import slim
from fxprune.trace import as_input_tuple
from fxprune.train.gate_training import (
    gate_optimizer,
    index_maps,
    marginal_costs,
    recalibrate_batchnorm,
    scale_grad,
)
from fxprune.train.loop import TrainingDiverged, evaluate, train_epoch
from fxprune.train.options import TrainPruneOptions, check_tradeoff
from fxprune.train.results import EpochRecord, TrainPruneHistory, TrainPruneResult
from fxprune.train.state import PruningState, device_of


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
    run = _TrainPruneRun(model, example_inputs, train_loader, val_loader,
                         (gamma, beta, alpha), epochs, lr, options or TrainPruneOptions())
    for epoch in range(epochs):
        record = run.epoch(epoch)
        if on_epoch is not None:
            on_epoch(record)
    return run.finish()


class _TrainPruneRun:
    """The state of one ``train_prune`` call, one method per phase (no closures)."""

    def __init__(self, model: nn.Module, example_inputs: Any, train_loader: Iterable,
                 val_loader: Iterable, tradeoff: tuple[float, float, float], epochs: int,
                 lr: float, options: TrainPruneOptions) -> None:
        self.gamma, self.beta, self.alpha = tradeoff
        self.epochs, self.lr, self.options = epochs, lr, options
        self.train_loader, self.val_loader = train_loader, val_loader
        self.device = device_of(model)
        self.inputs = tuple(t.to(self.device) for t in as_input_tuple(example_inputs))
        torch.manual_seed(options.seed)
        self.state = state = PruningState(
            model, self.inputs, learn_units=self.beta < 1.0, learn_sections=self.beta > 0.0,
            theta_init=options.theta_init,
        )
        self.macs0, self.params0 = state.cost.at_ones()
        self.dense = macs_report(state.plain, self.inputs)
        self.history = TrainPruneHistory(
            unit_ids=state.initial_units,
            unit_groups=state.initial_unit_groups,
            section_names=[s.name for s in state.initial_sections],
        )
        try:
            self.steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
        except TypeError:
            self.steps_per_epoch = 0
        self.check_every = (max(1, self.steps_per_epoch // options.checks_per_epoch)
                            if self.steps_per_epoch else 0)
        self.warmup = options.warmup(epochs)
        self.settle_from = max(self.warmup, epochs - options.settle_epochs)
        self.total_steps = epochs * self.steps_per_epoch  # 0: no len(), schedule per epoch
        self.sgd = self.weight_optimizer()
        self.scales = marginal_costs(state.cost, self.alpha, self.macs0, self.params0)
        self.theta_opt = gate_optimizer(state.bank, options, self.scales)
        self.pruned_units = 0
        self.step = 0
        self.learn_gates = False
        self.current_epoch = 0

    # -- optimizers and removals -----------------------------------------------------------
    def weight_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.state.plain.parameters(), lr=self.lr,
                               momentum=self.options.momentum,
                               nesterov=self.options.momentum > 0)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """What one step updates: the weights, and the gates while they learn."""
        if self.learn_gates and self.theta_opt is not None:
            return [self.sgd, self.theta_opt]
        return [self.sgd]

    def prune_check(self, where: dict[str, Any], final: bool = False) -> None:
        """Remove what stayed below the threshold (or, ``final``, everything below one
        half); the weight optimizer restarts, the gates' momenta are carried over."""
        state = self.state
        old_bank = state.bank
        before_units = [int(state.orig_of_class[c]) for c in state.units]
        before_sections = [s.key for s in state.gated_sections]
        event = state.round() if final else state.check(self.options.threshold,
                                                         self.options.patience)
        if event is None:
            return
        self.pruned_units += event["units"]
        self.history.events.append({**where, **event})
        self.sgd = self.weight_optimizer()
        self.theta_opt = gate_optimizer(state.bank, self.options, self.scales, self.theta_opt,
                                        old_bank, index_maps(state, before_units,
                                                             before_sections))

    # -- one step, through the shared loop -------------------------------------------------
    def objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Task loss plus the expected-cost regulariser and the gated weight decay."""
        bank, cost = self.state.bank, self.state.cost
        task = F.cross_entropy(self.state.gated(x), y)
        loss = task
        if self.learn_gates and self.gamma > 0:
            macs, params = cost(scale_grad(bank.theta, 1.0 - self.beta),
                                scale_grad(bank.zeta, self.beta))
            normalised = self.alpha * macs / self.macs0 + (1 - self.alpha) * params / self.params0
            loss = loss + self.gamma * normalised.float()
        if self.options.weight_decay:
            loss = loss + 0.5 * self.options.weight_decay * cost.l2(bank.theta, bank.zeta)
        return loss, task

    def before_step(self, step: int) -> None:
        progress = (min(1.0, step / self.total_steps) if self.total_steps
                    else self.current_epoch / self.epochs)
        for group in self.sgd.param_groups:  # cosine schedule
            group["lr"] = 0.5 * self.lr * (1 + math.cos(math.pi * progress))
        self.state.bank.theta.requires_grad_(self.learn_gates)
        self.state.bank.zeta.requires_grad_(self.learn_gates)

    def after_step(self, step: int) -> None:
        self.step = step
        if not self.learn_gates:
            return
        with torch.no_grad():
            self.state.bank.theta.clamp_(0.0, 1.0)
            self.state.bank.zeta.clamp_(0.0, 1.0)
        if self.check_every and step % self.check_every == 0:
            self.prune_check({"epoch": self.current_epoch + 1, "step": step})

    # -- epochs ----------------------------------------------------------------------------
    def epoch(self, epoch: int) -> EpochRecord:
        state = self.state
        started = time.perf_counter()
        self.current_epoch = epoch
        if epoch == self.settle_from and epoch > self.warmup:
            # the structure is final from here on: round, remove, train it deterministically
            self.prune_check({"epoch": epoch + 1, "step": self.step, "settle": True}, final=True)
            with torch.no_grad():
                state.bank.theta.fill_(1.0)
                state.bank.zeta.fill_(1.0)
        self.learn_gates = self.warmup <= epoch < self.settle_from
        state.gated.train()
        try:
            stats = train_epoch(self.train_loader, self.objective, self.optimizers,
                                epoch=epoch + 1, first_step=self.step, device=self.device,
                                before_step=self.before_step, after_step=self.after_step)
        except TrainingDiverged as err:
            raise ConfigError(f"training diverged: loss {err.loss} at epoch {err.epoch}, "
                              f"step {err.step}; lower the learning rate or gamma") from None
        if self.learn_gates and not self.check_every:
            self.prune_check({"epoch": epoch + 1, "step": self.step})
        recalibrate_batchnorm(state.gated, self.train_loader,
                              self.options.recalibration_batches, self.device, state.bank)
        accuracy = evaluate(state.gated, self.val_loader, self.device)
        report = macs_report(state.plain, self.inputs)
        with torch.no_grad():
            expected_macs, expected_params = state.cost(state.bank.theta, state.bank.zeta)
        record = EpochRecord(
            epoch=epoch + 1, loss=stats.loss, task_loss=stats.task_loss,
            val_accuracy=accuracy, macs=report.macs, params=report.params,
            expected_macs=float(expected_macs), expected_params=float(expected_params),
            units=state.live_units(), sections=len(state.sections),
            pruned_units=self.pruned_units, removed_sections=[s.name for s in state.removed],
            seconds=time.perf_counter() - started,
        )
        self.history.epochs.append(record)
        theta, zeta = state.theta_snapshot()
        self.history.theta.append(theta)
        self.history.zeta.append(zeta)
        return record

    def finish(self) -> TrainPruneResult:
        """Round the gates, cut the plain slim model out, re-estimate its norms."""
        state, options, dense = self.state, self.options, self.dense
        self.prune_check({"epoch": self.epochs, "step": self.step, "final": True}, final=True)
        final = slim(state.graph, state.graph.full_keep())  # a clean copy: no analysis metadata
        recalibrate_batchnorm(final, self.train_loader,
                              max(options.recalibration_batches, self.steps_per_epoch),
                              self.device)
        final.train(False)
        accuracy = evaluate(final, self.val_loader, self.device)
        after = macs_report(final, self.inputs)
        settings = {
            "method": "train_prune", "gamma": self.gamma, "beta": self.beta,
            "alpha": self.alpha, "epochs": self.epochs, "lr": self.lr, **options.to_dict(),
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
        plan = make_removal_plan(state, settings, summary)
        return TrainPruneResult(final, plan, self.history, [s.name for s in state.removed],
                                accuracy, dense.params, after.params, dense.macs, after.macs)


def make_removal_plan(state: PruningState, settings: dict[str, Any],
                      summary: dict[str, Any]) -> PrunePlan:
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


__all__ = ["make_removal_plan", "train_prune"]
