"""SearchSpace: the paper's Table 2 ranges, powers-of-two batch sizes, dict/TOML round trips."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from fxprune.errors import ConfigError
from hpo.space import HyperParams, SearchSpace


def sample(space: SearchSpace, count: int, seed: int = 0) -> list[HyperParams]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(study.ask()) for _ in range(count)]


def test_defaults_are_table_2():
    space = SearchSpace()
    assert space.lr == (1e-5, 0.2)
    assert space.batch_size == (32, 1024)
    assert space.weight_decay == (1e-5, 2e-2)
    assert (space.momentum, space.decay_factor) == (0.9, 0.1)  # fixed in the main experiments
    assert space.searched == ("lr", "batch_size", "weight_decay")
    extended = SearchSpace.extended()
    assert extended.momentum == (0.1, 0.99) and extended.decay_factor == (0.1, 1.0)
    assert len(extended.searched) == 5


def test_samples_stay_in_range_and_batch_sizes_are_powers_of_two():
    points = sample(SearchSpace.extended(), 200)
    assert {p.batch_size for p in points} <= {32, 64, 128, 256, 512, 1024}
    assert len({p.batch_size for p in points}) == 6
    for point in points:
        assert 1e-5 <= point.lr <= 0.2
        assert 1e-5 <= point.weight_decay <= 2e-2
        assert 0.1 <= point.momentum <= 0.99
        assert 0.1 <= point.decay_factor <= 1.0
    # log-uniform: about half the learning rates fall below the geometric midpoint
    below = sum(p.lr < math.sqrt(1e-5 * 0.2) for p in points)
    assert 70 < below < 130


def test_fixed_fields_are_not_searched():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    point = SearchSpace().suggest(trial)
    assert set(trial.params) == {"lr", "log2_batch_size", "weight_decay"}
    assert (point.momentum, point.decay_factor) == (0.9, 0.1)


def test_params_round_trip():
    space = SearchSpace.extended()
    for point in sample(space, 10):
        assert space.from_params(space.to_params(point)) == point


def test_dict_round_trip():
    space = SearchSpace(lr=(1e-3, 0.1), batch_size=128, momentum=(0.5, 0.95))
    assert SearchSpace.from_dict(space.to_dict()) == space
    point = HyperParams(lr=0.1, batch_size=64, weight_decay=5e-4)
    assert HyperParams.from_dict(point.to_dict()) == point


def test_toml_overrides(tmp_path: Path):
    path = tmp_path / "space.toml"
    path.write_text("[space]\nlr = [1e-4, 0.1]\nbatch_size = [64, 256]\nmomentum = [0.5, 0.99]\n"
                    "decay_factor = 0.2\n")
    space = SearchSpace.from_toml(path)
    assert space == SearchSpace(lr=(1e-4, 0.1), batch_size=(64, 256), momentum=(0.5, 0.99),
                                decay_factor=0.2)
    assert space.weight_decay == (1e-5, 2e-2)  # untouched keys keep the paper's range


@pytest.mark.parametrize("text, match", [
    ("batch_size = [48, 1024]", "not a power of two"),
    ("lr = [0.1, 0.01]", "low < high"),
    ("weight_decay = [0.0, 0.01]", "log-scale range needs low > 0"),
    ("momentum = 1.5", "momentum"),
    ("learning_rate = 0.1", "unknown search-space key"),
    ("lr = 'fast'", "expected a number"),
    ("lr = [", "not a readable TOML file"),
])
def test_bad_toml_is_one_config_error(tmp_path: Path, text: str, match: str):
    path = tmp_path / "space.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=match) as info:
        SearchSpace.from_toml(path)
    assert "\n" not in str(info.value)


def test_missing_toml_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        SearchSpace.from_toml(tmp_path / "nope.toml")
