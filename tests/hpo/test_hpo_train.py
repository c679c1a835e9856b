"""The training loop: step decay at 50%/75%, determinism, divergence, reinitialisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fxprune.errors import FxPruneError
from fxprune.loading import load_model
from hpo.data import load_dataset
from hpo.space import HyperParams
from hpo.train import (
    TrainingDiverged,
    decay_milestones,
    learning_rate,
    reinitialise,
    threads_per_worker,
    train_model,
)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic")


@pytest.fixture
def tiny(model_file: Path, synthetic) -> nn.Module:
    model, _ = load_model(str(model_file), input_shape=synthetic.input_shape,
                          num_classes=synthetic.num_classes)
    return model


def test_step_decay_at_half_and_three_quarters():
    assert decay_milestones(160) == (80, 120)  # the paper's schedule
    point = HyperParams(lr=0.1, batch_size=128, weight_decay=5e-4, decay_factor=0.1)
    assert learning_rate(point, 79, 160) == pytest.approx(0.1)
    assert learning_rate(point, 80, 160) == pytest.approx(0.01)
    assert learning_rate(point, 120, 160) == pytest.approx(0.001)
    assert decay_milestones(1) == ()  # a one-epoch run is never decayed


def test_training_learns_and_is_deterministic(tiny: nn.Module, synthetic):
    point = HyperParams(lr=0.05, batch_size=32, weight_decay=5e-4)
    seen: list[tuple[int, float]] = []
    first = train_model(reinitialise(tiny, 1), synthetic, point, 3, seed=0,
                        on_epoch=lambda epoch, acc: seen.append((epoch, acc)))
    again = train_model(reinitialise(tiny, 1), synthetic, point, 3, seed=0)
    assert first.val_accuracy == again.val_accuracy
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert [acc for _, acc in seen] == list(first.val_accuracy)
    assert first.final_accuracy > 0.6  # four classes: chance is 0.25


def test_lr_scales_multiply_each_named_parameters_learning_rate(tiny: nn.Module, synthetic,
                                                                 monkeypatch):
    # A parameter whose step is scaled by 0 must not move at all; one scaled by 2 trains in
    # its own group at twice the scheduled lr (decay milestones included) and half the weight
    # decay, so it decays by lr * weight_decay per step like every other parameter.
    point = HyperParams(lr=0.02, batch_size=32, weight_decay=0.0, momentum=0.0)
    names = [name for name, p in tiny.named_parameters() if p.dim() >= 2]
    frozen, doubled = names[0], names[-1]
    start = reinitialise(tiny, 1)
    model = reinitialise(tiny, 1)
    train_model(model, synthetic, point, 1, seed=0, lr_scales={frozen: 0.0})
    before, after = dict(start.named_parameters()), dict(model.named_parameters())
    assert torch.equal(after[frozen], before[frozen])
    assert all(not torch.equal(after[n], before[n]) for n in names if n != frozen)
    optimizers = []

    class Recorded(torch.optim.SGD):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "SGD", Recorded)
    one = reinitialise(tiny, 1)
    decayed = HyperParams(lr=0.02, batch_size=32, weight_decay=1e-3, momentum=0.0)
    train_model(one, synthetic, decayed, 4, seed=0, lr_scales={doubled: 2.0})
    (optimizer,) = optimizers
    target = dict(one.named_parameters())[doubled]
    group = {any(p is target for p in g["params"]): g for g in optimizer.param_groups}
    assert len(optimizer.param_groups) == 2
    assert group[True]["lr"] == pytest.approx(2 * group[False]["lr"])
    assert group[False]["lr"] == pytest.approx(learning_rate(decayed, 3, 4))  # the schedule
    assert group[False]["weight_decay"] == pytest.approx(1e-3)
    assert group[True]["weight_decay"] == pytest.approx(0.5e-3)
    assert (group[True]["lr"] * group[True]["weight_decay"]
            == pytest.approx(group[False]["lr"] * group[False]["weight_decay"]))
    with pytest.raises(FxPruneError, match="does not have: nowhere.weight"):
        train_model(reinitialise(tiny, 1), synthetic, point, 1, seed=0,
                    lr_scales={"nowhere.weight": 2.0})


def test_nan_loss_raises_training_diverged(tiny: nn.Module, synthetic):
    point = HyperParams(lr=1e10, batch_size=32, weight_decay=5e-4)
    with pytest.raises(TrainingDiverged, match="diverged: loss=") as info:
        train_model(reinitialise(tiny, 1), synthetic, point, 3, seed=0)
    assert info.value.epoch >= 1


def test_reinitialise_gives_fresh_seeded_weights_and_leaves_the_input(tiny: nn.Module):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    one, same, other = reinitialise(tiny, 1), reinitialise(tiny, 1), reinitialise(tiny, 2)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    weight = "features.0.weight"
    assert not torch.equal(one.state_dict()[weight], before[weight])
    assert torch.equal(one.state_dict()[weight], same.state_dict()[weight])
    assert not torch.equal(one.state_dict()[weight], other.state_dict()[weight])
    # the global RNG stream is not consumed
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    reinitialise(tiny, 5)
    assert torch.equal(torch.rand(3), expected)


def test_reinitialise_names_a_parameter_it_cannot_reset():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.gain = nn.Parameter(torch.ones(3))

    with pytest.raises(FxPruneError, match="gain"):
        reinitialise(Scaled(), 0)


def test_threads_are_shared_out():
    assert threads_per_worker(1) >= threads_per_worker(2) >= 1
    assert threads_per_worker(1000) == 1
