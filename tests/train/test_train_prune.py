"""Complexity-aware training: gates, section detection, expected-cost polynomials,
removal during training and the ``train-prune`` command, on tiny nets."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.errors import ConfigError, DataError
from fxprune.train.gates import GATES_TARGET, find_sections
from fxprune.train_prune import PruningState, TrainPruneOptions, train_prune
from fxprune.verify import masked_forward

INPUT_SHAPE = (4, 3, 8, 8)


# ------------------------------------------------------------------------ tiny models
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):  # (N, C_in, H, W)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))  # (N, C_out, H/s, W/s)


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3 (its in and out channels are one class), project 1x1."""

    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.expand(x)))
        out = torch.relu(self.bn2(self.depthwise(out)))
        return x + self.bn3(self.project(out))


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = BasicBlock(8, 8, 1)
        self.block2 = BasicBlock(8, 16, 2)
        self.block3 = InvertedResidual(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):  # (N, 3, 8, 8)
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block3(self.block2(self.block1(x)))  # (N, 16, 4, 4)
        return self.fc(x.mean((2, 3)))  # (N, classes)


class NotResidual(nn.Module):
    """Adds that are not residual sections: a bias tensor, and a linear-only 'branch'."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bias = nn.Parameter(torch.zeros(1, 8, 1, 1))
        self.proj = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = torch.relu(self.conv(x)) + self.bias
        return y + self.bn(self.proj(y))


def _randomise_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
    return model.eval()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets: one intra-op thread is as fast, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def inputs():
    return (torch.randn(*INPUT_SHAPE, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture
def state(inputs):
    torch.manual_seed(0)
    return PruningState(_randomise_bn(TinyNet()), inputs)


def _loaders(seed: int = 0, n_train: int = 128, n_val: int = 64, batch: int = 32):
    """Four classes: smooth prototypes plus noise, separable in a couple of epochs."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.nn.functional.interpolate(
        torch.rand(4, 3, 3, 3, generator=gen), size=(8, 8), mode="bilinear", align_corners=False
    )
    labels = torch.arange(n_train + n_val) % 4
    images = (protos[labels] - 0.5) * 4 + 0.5 * torch.randn(n_train + n_val, 3, 8, 8, generator=gen)
    train = torch.utils.data.TensorDataset(images[:n_train], labels[:n_train])
    val = torch.utils.data.TensorDataset(images[n_train:], labels[n_train:])
    return (
        torch.utils.data.DataLoader(
            train, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed)
        ),
        torch.utils.data.DataLoader(val, batch_size=64),
    )


FAST = TrainPruneOptions(warmup_epochs=1, checks_per_epoch=2, patience=2, theta_lr=0.1)


# ------------------------------------------------------------------------- sections
def test_sections_are_found_with_identity_conv_and_plain_skips(state):
    sections = {s.name: s for s in state.sections}
    assert sorted(sections) == ["block1", "block2", "block3"]
    # the skip path is never part of a section: identity, 1x1 conv + BN, or the input itself
    assert not any("shortcut" in m for m in sections["block2"].modules)
    assert set(sections["block2"].modules) == {
        "block2.conv1",
        "block2.bn1",
        "block2.conv2",
        "block2.bn2",
    }
    assert set(sections["block3"].modules) == {
        f"block3.{m}" for m in ("expand", "bn1", "depthwise", "bn2", "project", "bn3")
    }


def test_adds_that_are_not_residual_sections(inputs):
    gm = fxprune.trace_model(NotResidual(), inputs)
    assert find_sections(gm) == []


# --------------------------------------------------------------------- gated network
def test_gated_network_with_all_gates_on_equals_plain_network(state, inputs):
    assert state.bank.theta.numel() > 0 and state.bank.zeta.numel() == 3
    with torch.no_grad():
        expected = state.plain(*inputs)
        assert torch.equal(state.gated(*inputs), expected)  # eval: rounded gates
        state.gated.train()
        state.plain.train()
        assert torch.allclose(
            state.gated(*inputs), state.plain(*inputs), atol=1e-6
        )  # sampled: all 1


def test_gated_network_with_fixed_gates_equals_masked_dense_reference(state, inputs):
    rng = np.random.default_rng(0)
    g = state.graph
    for _ in range(3):
        on = rng.random(len(state.units)) > 0.4
        keep = g.full_keep()
        keep[state.units[~on]] = False
        if any(not keep[g.atom_class[s.atoms]].any() for s in g.spaces.values()):
            continue
        state.bank.fixed = (torch.tensor(on, dtype=torch.float32), torch.ones(3))
        with torch.no_grad():
            got = state.gated(*inputs)
        reference = masked_forward(g, keep, inputs)
        assert torch.allclose(got, reference, atol=1e-5)
        assert torch.allclose(fxprune.slim(g, keep).eval()(*inputs), reference, atol=1e-5)


# ----------------------------------------------------------------- cost polynomials
def test_cost_at_all_ones_equals_counted_macs_and_params(state, inputs):
    report = fxprune.macs_report(state.plain, inputs)
    macs, params = state.cost.at_ones()
    assert macs == pytest.approx(report.macs, abs=0.5)
    assert params == pytest.approx(report.params, abs=0.5)


def test_cost_at_binary_gates_equals_the_slimmed_model(inputs):
    """Independent reference: count the physically pruned model."""
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(12):
        state = PruningState(TinyNet(), inputs)
        on_units = rng.random(len(state.units)) > 0.3
        on_sections = rng.random(len(state.gated_sections)) > 0.3
        macs, params = state.cost(
            torch.tensor(on_units, dtype=torch.float32),
            torch.tensor(on_sections, dtype=torch.float32),
        )
        event = state.remove(~on_units, ~on_sections)
        if event is not None and (event["kept_last_channel"] or event["sections_by_units"]):
            continue  # a guard changed the structure: not the sampled network
        report = fxprune.macs_report(state.plain, inputs)
        assert float(macs) == pytest.approx(report.macs, abs=0.5)
        assert float(params) == pytest.approx(report.params, abs=0.5)
        checked += 1
    assert checked >= 4


def test_expected_cost_equals_monte_carlo_mean(state):
    gen = torch.Generator().manual_seed(0)
    theta = torch.rand(len(state.units), generator=gen)
    zeta = torch.rand(len(state.gated_sections), generator=gen)
    samples = 20_000
    xi = torch.bernoulli(theta.expand(samples, -1), generator=gen)
    xs = torch.bernoulli(zeta.expand(samples, -1), generator=gen)
    mc_macs, mc_params = state.cost(xi, xs)
    exact_macs, exact_params = state.cost(theta, zeta)
    for mc, exact in ((mc_macs, exact_macs), (mc_params, exact_params)):
        sigma = float(mc.std()) / math.sqrt(samples)
        assert abs(float(mc.mean()) - float(exact)) < 3 * sigma
    # the xi^2 = xi correction matters here (depthwise conv): the naive product differs
    assert state.cost.k_rows.numel() > 0


# --------------------------------------------------------------------- removal
def test_removed_structures_match_the_gated_network_with_those_gates_off(state, inputs):
    with torch.no_grad():
        theta = state.bank.theta
        theta.copy_(torch.rand(theta.shape, generator=torch.Generator().manual_seed(3)) * 0.4 + 0.6)
        theta[::5] = 0.0  # every fifth unit dies
        block1 = next(i for i, s in enumerate(state.gated_sections) if s.name == "block1")
        state.bank.zeta[block1] = 0.0
        expected = state.gated(*inputs)  # eval: rounded gates
    units_before = len(state.units)
    params_before = fxprune.macs_report(state.plain, inputs).params
    assert state.check(threshold=0.05, patience=2) is None  # first check: below once
    event = state.check(threshold=0.05, patience=2)
    assert event is not None and event["sections"] == ["block1"]
    assert len(state.units) < units_before
    assert "block1" not in [s.name for s in state.sections]
    assert GATES_TARGET not in dict(state.plain.named_modules())
    assert fxprune.macs_report(state.plain, inputs).params < params_before
    with torch.no_grad():
        assert torch.allclose(state.plain(*inputs), expected, atol=1e-5)
        assert torch.allclose(state.gated(*inputs), expected, atol=1e-5)


def test_final_rounding_keeps_the_gated_function_and_the_last_channel(state, inputs):
    with torch.no_grad():
        state.bank.theta.copy_(
            torch.rand(state.bank.theta.shape, generator=torch.Generator().manual_seed(4))
        )
        expected = state.gated(*inputs)
    state.round()
    for space in state.graph.spaces.values():
        assert len(space.atoms) >= 1
    with torch.no_grad():
        assert torch.allclose(state.plain(*inputs), expected, atol=1e-5)


def test_section_whose_units_all_die_is_removed(state, inputs):
    inner = state.graph.spaces["block1.conv1.out_channels"]
    dead = np.isin(state.units, np.unique(state.graph.atom_class[inner.atoms]))
    event = state.remove(dead, np.zeros(len(state.gated_sections), dtype=bool))
    assert event["sections_by_units"] == ["block1"]
    assert "block1.conv1" not in dict(state.plain.named_modules())


def test_last_channel_of_a_group_is_never_removed_when_layers_are_not_pruned(inputs):
    state = PruningState(TinyNet(), inputs, learn_sections=False)
    inner = state.graph.spaces["block1.conv1.out_channels"]
    dead = np.isin(state.units, np.unique(state.graph.atom_class[inner.atoms]))
    event = state.remove(dead, np.zeros(0, dtype=bool))
    assert event["sections"] == [] and event["kept_last_channel"] == 1
    assert state.plain.get_submodule("block1.conv1").out_channels == 1


# ------------------------------------------------------------------------ training
@pytest.mark.parametrize(
    "gamma, beta, alpha",
    [
        (-1.0, 0.5, 0.5),
        (float("nan"), 0.5, 0.5),
        (1.0, 1.5, 0.5),
        (1.0, -0.1, 0.5),
        (1.0, 0.5, 2.0),
        (1.0, 0.5, -1.0),
    ],
)
def test_bad_tradeoff_parameters_raise_config_error(gamma, beta, alpha, inputs):
    train, val = _loaders()
    with pytest.raises(ConfigError):
        train_prune(TinyNet(), inputs, train, val, gamma=gamma, beta=beta, alpha=alpha, epochs=1)


def _run(gamma: float, beta: float = 0.5, epochs: int = 6, options: TrainPruneOptions = FAST, **kw):
    torch.manual_seed(0)
    train, val = _loaders()
    return train_prune(
        TinyNet(),
        torch.randn(*INPUT_SHAPE),
        train,
        val,
        gamma=gamma,
        beta=beta,
        alpha=0.5,
        epochs=epochs,
        lr=0.05,
        options=options,
        **kw,
    )


def test_beta_zero_removes_no_layers():
    result = _run(gamma=20.0, beta=0.0)
    assert result.removed_sections == []
    assert result.plan.summary["units_after"] < result.plan.summary["units_before"]


def test_beta_one_removes_no_units():
    result = _run(gamma=20.0, beta=1.0)
    assert result.removed_sections  # strong pressure on layers alone removes some
    assert result.plan.modules == {}  # every surviving layer keeps its full width
    assert result.history.unit_ids == []  # no unit gates at all
    # the plan (with its removed sections) re-applies to a fresh instance
    again = fxprune.apply_plan(TinyNet(), result.plan.to_dict(), torch.randn(*INPUT_SHAPE))
    assert fxprune.count_params(again) == result.params_after
    assert again(torch.randn(*INPUT_SHAPE)).shape == result.model(torch.randn(*INPUT_SHAPE)).shape


def test_larger_gamma_gives_fewer_macs():
    weak, strong = _run(gamma=0.2), _run(gamma=10.0)
    assert strong.macs_after < weak.macs_after
    assert strong.macs_after < strong.macs_before


def test_settle_epochs_train_the_final_structure_deterministically():
    result = _run(gamma=5.0, options=dataclasses.replace(FAST, settle_epochs=2))
    settle = [e for e in result.history.events if e.get("settle")]
    assert len(settle) == 1 and settle[0]["epoch"] == 5
    assert all(t in (0.0, 1.0) for epoch in result.history.theta[-2:] for t in epoch)
    assert [r.macs for r in result.history.epochs[-2:]] == [result.macs_after] * 2


def test_result_is_a_plain_model_with_plan_and_history(tmp_path):
    records = []
    result = _run(gamma=5.0, epochs=3, on_epoch=records.append)
    assert [r.epoch for r in records] == [1, 2, 3]
    assert GATES_TARGET not in dict(result.model.named_modules())
    assert not any(n.meta.get("fxprune_labels") for n in result.model.graph.nodes)
    history = json.loads(json.dumps(result.history.to_dict()))
    assert len(history["theta"]) == 3 and len(history["theta"][0]) == len(history["unit_ids"])
    plan = fxprune.PrunePlan.from_json(result.plan.to_json())
    assert plan.settings["method"] == "train_prune"
    assert [s["name"] for s in plan.settings["removed_sections"]] == result.removed_sections
    assert result.macs_after == fxprune.macs_report(result.model, torch.randn(*INPUT_SHAPE)).macs
    result.history.plot(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_the_output_folder(tmp_path):
    from fxprune.cli.train import train_prune_command

    out = tmp_path / "run"
    train_prune_command(
        "fxprune:resnet20", out=out, data="synthetic", epochs=2, batch_size=64, gamma=2.0
    )
    names = {p.name for p in out.iterdir()}
    assert {"slim.pt", "meta.json", "plan.json", "history.json", "train_prune.png"} <= names
    model, example = fxprune.load_slim(out)
    assert model(*example).shape == (1, 4)
    with pytest.raises(ConfigError, match="--force"):
        train_prune_command("fxprune:resnet20", out=out, data="synthetic", epochs=1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no temp left


def test_cli_rejects_bad_options_and_missing_data(tmp_path):
    from fxprune.cli.train import train_prune_command

    with pytest.raises(ConfigError, match="beta"):
        train_prune_command("fxprune:resnet20", out=tmp_path / "a", beta=2.0)
    with pytest.raises(DataError):
        train_prune_command(
            "fxprune:resnet20", out=tmp_path / "b", data="cifar10", data_dir=tmp_path / "missing"
        )
    with pytest.raises(ConfigError, match="--data"):
        train_prune_command("fxprune:resnet20", out=tmp_path / "c", data="imagenet")


def test_cli_options_parse_through_typer(tmp_path):
    import typer
    from typer.testing import CliRunner

    from fxprune.cli.train import train_prune_command

    app = typer.Typer()
    app.command()(train_prune_command)
    result = CliRunner().invoke(
        app,
        [
            "fxprune:resnet20",
            "--out",
            str(tmp_path / "o"),
            "--data",
            "synthetic",
            "--epochs",
            "1",
            "--gamma",
            "1.5",
            "--beta",
            "0.3",
            "--alpha",
            "0.7",
            "--batch-size",
            "128",
            "--lr",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert (plan["settings"]["gamma"], plan["settings"]["beta"], plan["settings"]["alpha"]) == (
        1.5,
        0.3,
        0.7,
    )
