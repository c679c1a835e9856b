"""Latency-aware pruning: the table's cache and fingerprint, the selection against a fake
table with a known optimum, and the +-10% correction loop with a stubbed timer."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fxprune.api import analyze
from fxprune.deploy import LatencyTarget, prune_to_latency
from fxprune.deploy.latency_model import LatencyModel
from fxprune.deploy.latency_selection import LatencySelector
from fxprune.deploy.latency_table import (
    build_latency_table,
    discover_block,
    layer_specs,
    sweep_times,
    widths_to_measure,
)
from fxprune.errors import ConfigError

pytestmark = pytest.mark.onnx
pytest.importorskip("onnxruntime")


class TwoConvNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(x.mean((2, 3)))


def example(batch: int = 2):
    return (torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


class FakeTimer:
    """ms = weight x padded(cin) x padded(cout): output channels run in blocks of 8."""

    def __init__(self):
        self.calls = 0

    def __call__(self, spec, cin, cout, spatial=None):
        self.calls += 1
        weight = 0.01 if spec.kind == "linear" else 0.1 * math.prod(spec.kernel)
        if spatial is not None:  # sweeps run on a smaller image: same blocks
            weight *= 0.5
        return weight * cin * (-(-cout // 8) * 8) + 0.05


def build(tmp_path, timer=None, **options):
    model = TwoConvNet().eval()
    specs = layer_specs(model, example())
    return specs, build_latency_table(specs, model_name="TwoConvNet", cache_dir=tmp_path,
                                      timer=timer or FakeTimer(), **options)  # fmt: skip


# ----------------------------------------------------------------------------- table


def test_blocks_are_discovered_from_a_sweep():
    staircase = {w: 1.0 + (-(-w // 16)) for w in range(1, 41)}
    assert discover_block(staircase) == (16, [])
    linear = {w: 0.1 * w for w in range(1, 41)}
    assert discover_block(linear)[0] <= 2  # no blocks: every width is worth having
    cheap_small = {**staircase, 1: 0.5, 2: 0.5}  # widths 1-2 clearly faster than 3..16
    assert discover_block(cheap_small) == (16, [2])


# conv 3x3 input-side sweep measured on this machine's AVX-512 CPU (onnxruntime 1.31, 1 thread,
# median of 3 passes, ms): 1..16 in proportion, 17..31 like 32 or far worse
INPUT_SWEEP = [0.092, 0.130, 0.176, 0.210, 0.260, 0.303, 0.330, 0.419, 0.476, 0.610, 0.581, 0.620, 0.632, 0.759,
               0.727, 0.857, 2.011, 2.318, 2.244, 2.223, 2.293, 2.953, 2.835, 2.405, 3.250, 3.449, 25.393, 2.660,
               43.864, 20.535, 24.183, 2.459, 3.853, 51.162, 45.020, 56.843, 53.134, 45.314, 55.090, 64.165]  # fmt: skip


def test_narrow_widths_below_the_block_do_not_hide_it():
    times = dict(enumerate(INPUT_SWEEP, 1))
    evidence = {}
    block, small = discover_block(times, evidence=evidence)
    assert block == 16 and evidence["agreement"]["16"] >= 0.8  # 17..31 no faster than 32
    assert {1, 2, 4, 8, 15} <= set(small) and max(small) < 16  # the narrow path is kept


def test_ambiguous_sweep_takes_the_isa_block_and_says_so():
    # a staircase of 16 blurred by load: a third of the widths ran clearly faster than the
    # next multiple of 16, so no block gets the 80% agreement a sweep needs
    blurred = {w: 1.0 + (-(-w // 16)) - (0.5 if w in (*range(1, 6), *range(17, 22)) else 0.0) for w in range(1, 41)}
    evidence = {}
    swept = discover_block(blurred, evidence=evidence)[0]
    assert swept < 16 and evidence["rule"] == "sweep" and evidence["sweep_block"] == swept
    assert 0.5 <= evidence["agreement"]["16"] < 0.8
    evidence = {}
    assert discover_block(blurred, preferred=16, evidence=evidence)[0] == 16
    assert evidence["rule"] == "isa (sweep ambiguous)" and evidence["block"] == 16 and evidence["sweep_block"] == swept
    # a clear staircase of 16 stands whatever the ISA; no staircase at all is not overruled
    staircase = {w: 1.0 + (-(-w // 16)) for w in range(1, 41)}
    assert discover_block(staircase, preferred=8)[0] == 16
    assert discover_block({w: 0.1 * w for w in range(1, 41)}, preferred=16)[0] <= 2


def test_sweeps_take_the_median_of_repeated_passes():
    calls = []

    def noisy(spec, cin, cout, spatial=None):  # a burst of load (x5) during widths 1..20 of pass 1
        calls.append(cout)
        return (1.0 + (-(-cout // 16))) * (5.0 if len(calls) <= 20 else 1.0)

    spec = layer_specs(TwoConvNet().eval(), example())["b"]
    times, spread = sweep_times(noisy, spec, None, "out", 32, depthwise=False, repeats=3)
    assert len(calls) == 3 * 40 and calls[:40] == list(range(1, 41)) and calls[40:80] == list(range(40, 0, -1))
    assert times == {w: 1.0 + (-(-w // 16)) for w in range(1, 41)}  # the load is voted out
    assert spread > 1.0
    assert discover_block(times) == (16, [])


def test_table_measures_the_model_and_predicts_the_staircase(tmp_path):
    timer = FakeTimer()
    specs, table = build(tmp_path, timer)
    assert set(specs) == {"a", "b", "fc"}
    assert table.blocks["conv kxk/out"] == 8 and table.blocks["conv kxk/in"] <= 2
    assert timer.calls == table.measurements and not table.cached
    evidence = table.evidence["conv kxk/out"]  # how the block was decided, kept in the table
    assert evidence["block"] == 8 and evidence["repeats"] == 3 and "16" in evidence["agreement"]
    b = specs["b"]
    assert table.layer_ms(b, 32, 32) == pytest.approx(FakeTimer()(b, 32, 32))
    # 17..24 output channels cost what 24 costs: the runtime pads to the block
    assert table.layer_ms(b, 32, 17) == pytest.approx(table.layer_ms(b, 32, 24))
    assert table.layer_ms(b, 32, 16) < table.layer_ms(b, 32, 17)
    assert widths_to_measure(b, "out", 8) == [8, 16, 24]


def test_table_is_cached_under_its_fingerprint(tmp_path):
    _, first = build(tmp_path)
    files = list(tmp_path.glob("TwoConvNet-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())["fingerprint"]
    for key in ("model", "layers", "runtime", "provider", "batch", "threads", "device"):
        assert key in saved, key
    assert saved["runtime"].startswith("onnxruntime ") and saved["batch"] == 2

    again = FakeTimer()
    _, second = build(tmp_path, again)
    assert second.cached and again.calls == 0  # a hit costs no measurement
    assert second.layers == first.layers and second.blocks == first.blocks

    other_threads = FakeTimer()
    _, third = build(tmp_path, other_threads, threads=2)
    assert not third.cached and other_threads.calls > 0  # another fingerprint
    assert len(list(tmp_path.glob("TwoConvNet-*.json"))) == 2


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    build(tmp_path)
    (path,) = tmp_path.glob("TwoConvNet-*.json")
    path.write_text("{not json")
    timer = FakeTimer()
    _, table = build(tmp_path, timer)
    assert not table.cached and timer.calls > 0
    json.loads(path.read_text())  # rewritten whole


# ----------------------------------------------------------------------------- selection


def brute_force(selector: LatencySelector, budget: float) -> float:
    """The best retained score over every combination of candidate widths."""
    dense = selector.predict(selector.dense_widths())
    best = -math.inf
    for widths in itertools.product(*selector.candidates):
        widths = list(widths)
        if selector.predict(widths) <= budget * dense + 1e-12:
            best = max(best, sum(p[w] for p, w in zip(selector.prefix, widths)))
    return best


@pytest.mark.parametrize("budget", [0.8, 0.6, 0.45, 0.3])
def test_selection_finds_the_known_optimum(tmp_path, budget):
    specs, table = build(tmp_path)
    graph = analyze(TwoConvNet().eval(), example())
    scores = np.zeros(graph.num_classes)
    (first, second) = [g for g in graph.groups if g.prunable]
    scores[first.classes] = np.linspace(1.0, 2.0, first.size)  # cutting "a"/"b" in: cheap score
    scores[second.classes] = np.linspace(5.0, 9.0, second.size)  # "b" out / fc in: valuable
    selector = LatencySelector(graph, specs, scores, table, min_ratio=0.1)
    # "a" pads its output to blocks of 8 but "b" reads any input width at its own cost, so
    # every width from the floor (10% of 32 -> 4) saves time somewhere: all are candidates
    assert selector.candidates[0][0] == 4 and {8, 16, 24, 32} <= set(selector.candidates[0])
    keep, predicted = selector.select(budget)
    assert predicted <= budget + 1e-9
    widths = [int(keep[g.classes].sum()) for g in selector.groups]
    retained = sum(p[w] for p, w in zip(selector.prefix, widths))
    assert retained == pytest.approx(brute_force(selector, budget))
    # within a group the best-scored channels stay
    kept_first = np.flatnonzero(keep[first.classes])
    assert list(kept_first) == list(range(first.size - len(kept_first), first.size))


def test_selection_respects_min_ratio(tmp_path):
    specs, table = build(tmp_path)
    graph = analyze(TwoConvNet().eval(), example())
    selector = LatencySelector(graph, specs, np.ones(graph.num_classes), table, min_ratio=0.5)
    keep, predicted = selector.select(0.01)  # unreachable: stops at the floors
    for group in selector.groups:
        assert keep[group.classes].sum() >= 16
    assert predicted > 0.01


# ----------------------------------------------------------------------------- correction loop


def test_correction_loop_lands_within_ten_percent(tmp_path):
    model = TwoConvNet().eval()
    seen = []

    def measure(slim_model):  # the real runtime: 40% slower on narrow models than the table says
        from fxprune.cost import count_macs

        fraction = count_macs(slim_model, example()) / count_macs(model, example())
        seen.append(fraction)
        return min(1.0, 0.15 + 1.4 * fraction)

    result = prune_to_latency(model, example(), 0.5, scorer="l1", measure=measure,
                              layer_timer=FakeTimer(), cache_dir=tmp_path, min_ratio=0.1)  # fmt: skip
    assert result.within_tolerance, [s.measured for s in result.steps]
    assert abs(result.measured / 0.5 - 1) <= 0.10
    assert len(result.steps) >= 2  # the first attempt missed; the budget was corrected
    first, second = result.steps[:2]
    assert first.budget == pytest.approx(0.5)
    assert first.measured > 0.55  # too slow: the table is optimistic about narrow layers
    assert second.budget <= 0.5 * 0.5 / first.measured + 1e-9  # so the budget went down
    assert second.macs < first.macs
    assert result.result.plan.settings["target"] == "latency=0.5"
    assert result.result.plan.settings["latency"]["measured"] == pytest.approx(result.measured)
    out = result.model(*example())
    assert out.shape == (2, 10)
    summary = result.summary()
    assert summary["within_tolerance"] and summary["target"] == "latency=0.5"


def test_unreachable_target_returns_the_closest_attempt(tmp_path):
    result = prune_to_latency(TwoConvNet().eval(), example(), 0.05, scorer="l1",
                              measure=lambda m: 0.6, layer_timer=FakeTimer(),
                              cache_dir=tmp_path, max_iterations=3)  # fmt: skip
    assert not result.within_tolerance and result.measured == pytest.approx(0.6)
    assert 1 <= len(result.steps) <= 3


@pytest.mark.parametrize("text", ["latency=0", "latency=1.5", "flops=0.3", "latency=abc"])
def test_bad_targets(text):
    with pytest.raises(ConfigError):
        LatencyTarget.parse(text)
    assert LatencyTarget.parse("latency=0.3").describe() == "latency=0.3"


def test_latency_vs_width_plot(tmp_path):
    from fxprune.deploy.latency_table import plot_latency_vs_width

    specs, table = build(tmp_path)
    path = plot_latency_vs_width(table, specs, tmp_path / "widths.png", top=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prune_accepts_the_latency_target_object(tmp_path, monkeypatch):
    import fxprune
    from fxprune.deploy import latency_target

    fractions = iter([0.7, 0.52, 0.5, 0.5, 0.5])
    real_search = latency_target.search

    def stubbed(*args, **kwargs):  # the stubbed runtime, the fake layer timer
        return real_search(*args, **kwargs, measure=lambda m: next(fractions), layer_timer=FakeTimer())

    monkeypatch.setattr(latency_target, "search", stubbed)
    target = LatencyTarget(0.5, cache_dir=str(tmp_path))
    result = fxprune.prune(TwoConvNet().eval(), example(), min_ratio=0.1, scorer="l1", target=target)
    assert result.plan.settings["target"] == "latency=0.5"
    assert result.model(*example()).shape == (2, 10) and not result.keep.all()


@pytest.mark.parametrize("own, given, used", [(None, 3, 3), (2, 3, 2), (None, None, None)])
def test_threads_reach_a_latency_target_object(tmp_path, monkeypatch, own, given, used):
    """A ``threads`` argument counts when the target object names none (the CLI passes a
    parsed target); the object's own setting wins."""
    from fxprune.deploy import latency_target

    seen = []
    real_search = latency_target.search

    def spy(graph, inputs, scores, target, **kwargs):
        seen.append(target.threads)
        return real_search(graph, inputs, scores, target, **{**kwargs, "measure": lambda m: 0.5,
                                                             "layer_timer": FakeTimer()})

    monkeypatch.setattr(latency_target, "search", spy)
    target = LatencyTarget(0.5, threads=own, cache_dir=str(tmp_path))
    prune_to_latency(TwoConvNet().eval(), example(), target, scorer="l1", min_ratio=0.1,
                     threads=given)
    assert seen == [used]


def test_model_width_plot_measures_once_and_caches(tmp_path, monkeypatch):
    from fxprune.deploy import latency_table

    timer = FakeTimer()
    monkeypatch.setattr(latency_table, "Timer", lambda providers, threads: timer)
    path = latency_table.model_width_plot(TwoConvNet().eval(), example(), tmp_path / "w.png",
                                          cache_dir=tmp_path / "cache", top=3)  # fmt: skip
    assert path.stat().st_size > 1000 and timer.calls > 0
    calls = timer.calls
    latency_table.model_width_plot(TwoConvNet().eval(), example(), tmp_path / "w2.png",
                                   cache_dir=tmp_path / "cache")  # fmt: skip
    assert timer.calls == calls  # second plot: cache hit


# ----------------------------------------------------------------------------- latency model


class FakeRuntime:
    """A whole model on a stubbed runtime: its layers cost what ``FakeTimer`` says, plus
    work between layers (``ACT`` ms per activation element the layers write) and a
    per-run overhead, neither of which the layer table sees."""

    ACT = 0.1
    OVERHEAD = 40.0

    def __init__(self, dense):
        self.dense = dense
        self.calls = 0

    def ms(self, model) -> float:
        specs = layer_specs(model, example()).values()
        layers = sum(FakeTimer()(s, s.in_channels, s.out_channels) for s in specs)
        return layers + self.ACT * sum(s.output_elements(s.out_channels) for s in specs) + self.OVERHEAD

    def calibrate(self):  # a dense timing without a profile: the residual is attributed
        return {"dense_ms": self.ms(self.dense), "overhead": self.OVERHEAD}

    def __call__(self, slim_model) -> float:
        self.calls += 1
        return self.ms(slim_model) / self.ms(self.dense)


def test_calibrated_model_predicts_the_first_attempt(tmp_path):
    model = TwoConvNet().eval()
    runtime = FakeRuntime(model)
    result = prune_to_latency(model, example(), 0.5, scorer="l1", measure=runtime, layer_timer=FakeTimer(),
                              cache_dir=tmp_path, min_ratio=0.1)  # fmt: skip
    first = result.steps[0]
    assert abs(first.predicted / first.measured - 1) <= 0.03, (first.predicted, first.measured)
    assert len(result.steps) == 1 and result.within_tolerance  # no correction needed
    calibration = result.summary()["calibration"]
    assert calibration["calibrated"] and calibration["act_ms_per_M"] == pytest.approx(FakeRuntime.ACT * 1e6, rel=0.01)
    assert calibration["overhead_ms"] == FakeRuntime.OVERHEAD and calibration["scale"] == 1.0

    # the table alone (a runtime without a dense timing) misses the activations' share
    table_only = prune_to_latency(model, example(), 0.5, scorer="l1", measure=lambda m: runtime(m),
                                  layer_timer=FakeTimer(), cache_dir=tmp_path, min_ratio=0.1)  # fmt: skip
    first_table = table_only.steps[0]
    assert abs(first_table.predicted / first_table.measured - 1) > 0.05


def test_latency_model_calibration():
    # profiled under load: dense 300 ms, 60% in conv kernels, 30% in others, 10% outside
    loaded = LatencyModel.calibrate(80.0, 40.0, 300.0, 30.0, layer_share=0.6, activation_share=0.3)
    assert loaded.scale == pytest.approx(180 / 80) and loaded.act_ms == pytest.approx(90 / 40)
    assert loaded.overhead == pytest.approx(30.0) and loaded.ms(80.0, 40.0) == pytest.approx(300.0)
    assert loaded.fraction(40.0, 20.0) == pytest.approx(0.3 + 0.15 + 0.1)  # shares, not a residual
    # table 80 ms, 40 M activations, dense measured 100 ms, 4 ms overhead: 16 ms residual
    model = LatencyModel.calibrate(80.0, 40.0, 100.0, 4.0)
    assert model.calibrated and model.scale == 1.0 and model.act_ms == pytest.approx(0.4)
    assert model.ms(80.0, 40.0) == pytest.approx(100.0)
    assert model.fraction(40.0, 20.0) == pytest.approx((40 + 8 + 4) / 100)
    # budget for the selector: (goal x 100 - 4) / 96 of its variable part
    assert model.selector_budget(0.5) == pytest.approx(46 / 96)
    # a pessimistic table (residual < 0) is scaled, not given negative activations
    pessimistic = LatencyModel.calibrate(120.0, 40.0, 100.0, 4.0)
    assert pessimistic.act_ms == 0.0 and pessimistic.scale == pytest.approx(96 / 120)
    # without a dense timing the model is the table alone
    bare = LatencyModel.calibrate(80.0, 40.0, None)
    assert not bare.calibrated and bare.fraction(40.0, 5.0) == pytest.approx(0.5)


def test_profile_shares_split_a_dense_profile():
    from fxprune.deploy.latency_model import profile_shares
    from fxprune.deploy.layer_profile import OpBreakdown

    breakdown = OpBreakdown(run_ms=101.0, kernel_ms=100.0, gap_ms=1.0, nodes=5, top_nodes=[], by_category={
        "conv kxk (NCHWc)": {"ms": 60.0, "macs": 1.0, "nodes": 2}, "depthwise (NCHWc)": {"ms": 20.0, "macs": 1.0, "nodes": 1},
        "gemm (classifier)": {"ms": 1.0, "macs": 1.0, "nodes": 1}, "layout reorder": {"ms": 9.0, "macs": 0.0, "nodes": 1},
        "pooling": {"ms": 10.0, "macs": 0.0, "nodes": 1}})  # fmt: skip
    shares = profile_shares(breakdown)
    assert shares == pytest.approx({"dense_ms": 101.0, "overhead": 1.0, "layer_share": 81 / 101,
                                    "activation_share": 19 / 101})  # fmt: skip
    model = LatencyModel.calibrate(40.0, 10.0, **shares)
    assert model.ms(40.0, 10.0) == pytest.approx(101.0) and model.overhead == pytest.approx(1.0)
