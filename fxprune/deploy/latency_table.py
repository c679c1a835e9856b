"""A latency model from measurement: every conv/linear layer timed alone on the runtime.

Widths that fall off a runtime's blocked kernels cost as much as the next block up
(ONNX Runtime's NCHWc convolutions pad channels to 8 or 16; a width it cannot block
falls back to a slower NCHW path). So the table is *measured*, never derived from MACs:

1. **Blocks, discovered.** For each kind of layer in the model (conv kxk, conv 1x1,
   depthwise, linear) and each side (input, output channels), one representative layer
   is timed at every width 1..40, in ``SWEEP_REPEATS`` passes (alternating direction, so
   a burst of load hits different widths each pass), and each width's median is used.
   The block is the largest ``b`` in 2..32 such that a width above ``b`` that is not a
   multiple of it is (nearly always) no faster than the next multiple; widths below the
   block that are clearly faster than every wider one are kept too. When the sweep is ambiguous (the
   CPU's SIMD block, 16 floats with AVX-512 and 8 with AVX2 from ``/proc/cpuinfo``, is
   borne out by at least half the widths but not by the 80% a block needs), the ISA's
   block is taken. The evidence (agreement per block, the ISA, the rule that decided,
   the spread between passes) is kept in the table's ``evidence``. A group's candidate
   widths are the multiples of its layers' blocks.
2. **Per layer.** Each distinct layer (kind, widths, kernel, stride, input size) is
   timed dense, at a few candidate widths of its output side (input dense) and of its
   input side (output dense), and at one corner (both small). Latency is modelled as
   ``a + (dense - a) * g_in(c_in) * g_out(c_out)``: ``g`` interpolates the measured
   points, and ``a`` (the per-call cost that does not shrink) follows from the corner.
3. **Cached** as JSON under a fingerprint of the model's layers, onnxruntime version,
   provider, batch, threads and device name; a hit costs nothing.

Every measurement builds a one-layer ONNX model (conv + ReLU, or MatMul + Add) with
``onnx.helper`` and times it with the session settings of ``fxprune.deploy.runtime``:
the minimum over a few runs, which on a shared machine is the least disturbed number.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fxprune.errors import ConfigError
from fxprune.io import atomic_write_bytes

from .report import new_figure, save_figure
from .runtime import device_name, open_session, resolve_providers

TABLE_VERSION = 2  # 2: sweeps repeated, block evidence recorded
SWEEP_WIDTHS = range(1, 41)
SWEEP_REPEATS = 3  # passes over the sweep widths; each width's median is used
BLOCK_CHOICES = (2, 4, 8, 16, 32)
BLOCK_TOLERANCE = 0.08  # a width within 8% of the next multiple's time counts as "no faster"
BLOCK_AGREEMENT = 0.8  # ... for at least 80% of the widths checked
AMBIGUOUS_AGREEMENT = 0.5  # the ISA block, agreed on by >= 50% (but < 80%): take it
SMALL_GAIN = 0.1  # a width below the block is kept if >= 10% faster than every wider one
FRACTIONS = (0.125, 0.25, 0.5, 0.75)  # where each layer side is measured (plus dense)
SWEEP_PIXELS = 28 * 28  # sweeps run on at most this many output pixels (cheap, same kernels)


@dataclass(frozen=True)
class LayerSpec:
    """A conv or linear layer as the runtime sees it, at its dense widths."""

    kind: str  # "conv" | "linear"
    in_channels: int
    out_channels: int
    input_shape: tuple[int, ...]  # (N, C, *spatial) for conv, (*lead, in) for linear
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def category(self) -> str:
        if self.kind == "linear":
            return "linear"
        if self.depthwise:
            return "depthwise"
        if self.groups > 1:
            return "grouped"
        return "conv 1x1" if math.prod(self.kernel) == 1 else "conv kxk"

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def output_elements(self, cout: int) -> int:
        """Elements the layer writes at ``cout`` output channels: the activation the ops
        after it (BN, activation, add, pooling, reorders) work on."""
        if self.kind == "linear":
            return math.prod(self.input_shape[:-1]) * cout
        spatial = [(size + 2 * pad - dil * (k - 1) - 1) // st + 1 for size, k, st, pad, dil
                   in zip(self.input_shape[2:], self.kernel, self.stride, self.padding, self.dilation)]  # fmt: skip
        return self.input_shape[0] * cout * math.prod(spatial)

    def measurable(self) -> bool:
        return self.category in ("linear", "depthwise", "conv 1x1", "conv kxk")


def layer_specs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, LayerSpec]:
    """Module path -> LayerSpec for every Conv1d/2d/3d and Linear the inputs reach."""
    specs: dict[str, LayerSpec] = {}
    handles = []

    def record(name: str, module: nn.Module):
        def hook(_module, args):
            if name in specs or not args or not isinstance(args[0], torch.Tensor):
                return
            shape = tuple(int(s) for s in args[0].shape)
            if isinstance(module, nn.Linear):
                specs[name] = LayerSpec("linear", module.in_features, module.out_features, shape)
            elif isinstance(module.padding, str) or module.padding_mode != "zeros":
                return  # 'same' padding or a padding mode: not modelled, left to the correction
            else:
                specs[name] = LayerSpec("conv", module.in_channels, module.out_channels, shape,
                                        tuple(module.kernel_size), tuple(module.stride),
                                        tuple(module.padding), tuple(module.dilation), module.groups)  # fmt: skip

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(module.register_forward_pre_hook(record(name, module)))
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return specs


# --------------------------------------------------------------------------- one measurement


def layer_onnx(spec: LayerSpec, cin: int, cout: int, spatial: tuple[int, ...] | None = None) -> bytes:
    """A one-layer ONNX model of ``spec`` at widths (cin, cout), random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if spec.kind == "linear":
        lead = list(spec.input_shape[:-1])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, cin])
        weight = numpy_helper.from_array((rng.standard_normal((cin, cout)) * 0.05).astype(np.float32), "w")
        bias = numpy_helper.from_array(np.zeros(cout, np.float32), "b")
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])]
    else:
        groups = cin if spec.depthwise else spec.groups
        size = list(spatial or spec.input_shape[2:])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [spec.input_shape[0], cin, *size])
        shape = (cout, cin // groups, *spec.kernel)
        weight = numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), "w")
        bias = numpy_helper.from_array(np.zeros(cout, np.float32), "b")
        conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(spec.kernel),
                                strides=list(spec.stride), pads=list(spec.padding) * 2,
                                dilations=list(spec.dilation), group=groups)  # fmt: skip
        nodes = [conv, helper.make_node("Relu", ["y"], ["z"])]
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "layer", [x], [z], initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


class Timer:
    """Times one-layer models on one runtime: min over runs (>= ``min_runs``, >= ``min_seconds``)."""

    def __init__(self, providers: list[str], threads: int | None, min_runs: int = 10,
                 min_seconds: float = 0.02, max_runs: int = 40):  # fmt: skip
        self.providers, self.threads = providers, threads
        self.min_runs, self.min_seconds, self.max_runs = min_runs, min_seconds, max_runs

        self._sessions: dict[tuple, tuple[Any, dict[str, np.ndarray]]] = {}

    def __call__(self, spec: LayerSpec, cin: int, cout: int, spatial=None) -> float:
        key = (spec.key, cin, cout, spatial)
        if key not in self._sessions:  # kept for the repeated passes of a sweep
            session = open_session(layer_onnx(spec, cin, cout, spatial), self.providers, self.threads)
            node = session.get_inputs()[0]
            feed = {node.name: np.random.default_rng(0).standard_normal(node.shape).astype(np.float32)}
            self._sessions[key] = (session, feed)
        session, feed = self._sessions[key]
        session.run(None, feed)
        session.run(None, feed)
        best, runs, started = float("inf"), 0, time.perf_counter()
        while runs < self.max_runs and (runs < self.min_runs or time.perf_counter() - started < self.min_seconds):
            tick = time.perf_counter()
            session.run(None, feed)
            best = min(best, (time.perf_counter() - tick) * 1e3)
            runs += 1
        return best

    def clear(self) -> None:
        """Drop the sessions kept since the last call (after a sweep)."""
        self._sessions.clear()


# --------------------------------------------------------------------------- blocks


def block_agreement(times: dict[int, float]) -> dict[int, float]:
    """Per block ``b``: the fraction of swept widths above ``b`` (not multiples of it) that
    run no faster than the next multiple of ``b`` (within ``BLOCK_TOLERANCE``); blocks
    with fewer than 3 such widths are left out. Widths below ``b`` are not asked: on
    ONNX Runtime's CPU convolutions they may run a narrow path of their own (input
    channels 1..15 cost in proportion, 0.09-0.86 ms, while 17..31 cost 2-60 ms), which is
    what the efficient small widths keep."""
    agreement = {}
    for b in BLOCK_CHOICES:
        checks = [(w, -(-w // b) * b) for w in times if w > b and w % b and -(-w // b) * b in times]
        if len(checks) >= 3:
            agreement[b] = sum(times[w] >= (1 - BLOCK_TOLERANCE) * times[up] for w, up in checks) / len(checks)
    return agreement


def discover_block(times: dict[int, float], preferred: int | None = None,
                   evidence: dict[str, Any] | None = None) -> tuple[int, list[int]]:  # fmt: skip
    """(block, efficient widths below it) from a width sweep (see module docstring).

    ``preferred``: the block the CPU's ISA suggests, taken when the sweep is ambiguous;
    ``evidence``, when given, receives the agreement per block and the rule that decided.
    """
    agreement = block_agreement(times)
    swept = max((b for b, a in agreement.items() if a >= BLOCK_AGREEMENT), default=1)
    block, rule = swept, "sweep"
    # a clear larger block stands; a smaller one (or none) with the ISA's block half agreed
    # on is load blurring the staircase
    if preferred and swept < preferred and agreement.get(preferred, 0.0) >= AMBIGUOUS_AGREEMENT:
        block, rule = preferred, "isa (sweep ambiguous)"
    small = [w for w in sorted(times) if w < block
             and times[w] < (1 - SMALL_GAIN) * min(t for v, t in times.items() if w < v <= block)]  # fmt: skip
    if evidence is not None:
        evidence.update({"agreement": {str(b): round(a, 3) for b, a in agreement.items()},
                         "sweep_block": swept, "preferred": preferred, "rule": rule, "block": block})  # fmt: skip
    return block, small


def isa_block(provider: str = "CPUExecutionProvider") -> tuple[str, int] | None:
    """(ISA, floats per SIMD register) of this CPU from ``/proc/cpuinfo``'s flags:
    ("avx512f", 16) or ("avx2", 8); None off the CPU provider or when unknown."""
    if provider != "CPUExecutionProvider":
        return None
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return None
    for isa, block in (("avx512f", 16), ("avx2", 8)):
        if isa in flags:
            return isa, block
    return None


def sweep_times(timer, stand_in: LayerSpec, spatial, side: str, other: int, depthwise: bool,
                repeats: int = SWEEP_REPEATS) -> tuple[dict[int, float], float]:  # fmt: skip
    """Width -> median ms over ``repeats`` passes (alternating direction), and the median
    relative spread (max - min) / median between passes."""
    runs: dict[int, list[float]] = {w: [] for w in SWEEP_WIDTHS}
    for rep in range(repeats):
        for width in (SWEEP_WIDTHS if rep % 2 == 0 else reversed(SWEEP_WIDTHS)):
            if depthwise:
                runs[width].append(timer(stand_in, width, width, spatial))
            elif side == "out":
                runs[width].append(timer(stand_in, other, width, spatial))
            else:
                runs[width].append(timer(stand_in, width, other, spatial))
    medians = {w: float(np.median(t)) for w, t in runs.items()}
    spread = float(np.median([(max(t) - min(t)) / max(medians[w], 1e-9) for w, t in runs.items()]))
    return medians, spread


def _sweep_spec(spec: LayerSpec, side: str) -> tuple[LayerSpec, tuple[int, ...] | None, int]:
    """A cheap stand-in for a sweep: other side at most 64 wide, at most ~28x28 outputs."""
    other = min(64, spec.out_channels if side == "in" else spec.in_channels)
    spatial = None
    if spec.kind == "conv" and len(spec.input_shape) > 2:
        size = spec.input_shape[2:]
        scale = math.sqrt(max(1.0, math.prod(size) / (SWEEP_PIXELS * math.prod(spec.stride))))
        spatial = tuple(max(k, int(s / scale)) for s, k in zip(size, spec.kernel))
    return spec, spatial, other


# --------------------------------------------------------------------------- the table


@dataclass
class LatencyTable:
    """Measured latency per layer and the runtime's blocks; JSON on disk."""

    fingerprint: dict[str, Any]
    blocks: dict[str, int] = field(default_factory=dict)  # "conv kxk/out" -> 16
    small: dict[str, list[int]] = field(default_factory=dict)  # efficient widths below the block
    sweeps: dict[str, dict[int, float]] = field(default_factory=dict)  # side -> width -> ms
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # spec key -> measurements
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)  # side -> how its block was decided
    seconds: float = 0.0  # what building it cost
    measurements: int = 0
    cached: bool = False  # loaded from disk

    # ---- the model
    def layer_ms(self, spec: LayerSpec, cin: int, cout: int) -> float:
        """Modelled latency of ``spec`` at widths (cin, cout); 0 for layers not measured."""
        entry = self.layers.get(spec.key)
        if entry is None:
            return 0.0
        dense, base = entry["dense"], entry["base"]
        cout = self.padded(spec, "out", cout)
        if spec.depthwise:
            return base + (dense - base) * _interp(entry["out"], cout, dense, base)
        g_out = _interp(entry["out"], cout, dense, base)
        g_in = _interp(entry["in"], self.padded(spec, "in", cin), dense, base)
        return base + (dense - base) * g_in * g_out

    def padded(self, spec: LayerSpec, side: str, width: int) -> int:
        """The width the runtime effectively runs: up to the next multiple of the side's
        block, unless it is one of the efficient widths below the block."""
        block = self.block_for(spec, side)
        if block <= 1 or width in self.small_for(spec, side):
            return width
        return -(-width // block) * block

    def block_for(self, spec: LayerSpec, side: str) -> int:
        return self.blocks.get(f"{spec.category}/{'out' if spec.depthwise else side}", 1)

    def small_for(self, spec: LayerSpec, side: str) -> list[int]:
        return self.small.get(f"{spec.category}/{'out' if spec.depthwise else side}", [])

    # ---- disk
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("cached")
        data["version"] = TABLE_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        if data.get("version") != TABLE_VERSION:
            raise ConfigError(f"latency table version {data.get('version')} is not {TABLE_VERSION}")
        sweeps = {k: {int(w): t for w, t in v.items()} for k, v in data["sweeps"].items()}
        layers = {k: {**v, "out": {int(w): t for w, t in v["out"].items()},
                      "in": {int(w): t for w, t in v["in"].items()}} for k, v in data["layers"].items()}  # fmt: skip
        return cls(data["fingerprint"], data["blocks"], data["small"], sweeps, layers, data["evidence"],
                   data["seconds"], data["measurements"], cached=True)  # fmt: skip

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_bytes(Path(path), json.dumps(self.to_dict(), indent=1).encode())


def _interp(points: dict[int, float], width: int, dense: float, base: float) -> float:
    """g(width) in [0, 1]: the measured fraction of the shrinkable time, interpolated
    linearly between measured widths, flat below the smallest."""
    span = max(dense - base, 1e-9)
    widths = sorted(points)
    if not widths:
        return 1.0
    values = [max(0.0, (points[w] - base) / span) for w in widths]
    return float(np.interp(width, widths, values, left=values[0]))


def fingerprint(specs: dict[str, LayerSpec], model_name: str, provider: str, threads: int | None) -> dict[str, Any]:
    import onnxruntime as ort

    layers = sorted({spec.key for spec in specs.values()})
    batch = next(iter(specs.values())).input_shape[0] if specs else 0
    return {
        "model": model_name,
        "layers": hashlib.sha256("\n".join(layers).encode()).hexdigest()[:16],
        "runtime": f"onnxruntime {ort.__version__}",
        "provider": provider,
        "batch": batch,
        "threads": threads,
        "device": device_name(provider),
        "table_version": TABLE_VERSION,
    }


def default_cache_dir() -> Path:
    root = os.environ.get("FXPRUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fxprune")
    return Path(root) / "latency"


def cache_path(print_: dict[str, Any], cache_dir: str | os.PathLike | None) -> Path:
    digest = hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir or default_cache_dir()) / f"{print_['model']}-{digest}.json"


def widths_to_measure(spec: LayerSpec, side: str, block: int, small: list[int] | tuple[int, ...] = ()) -> list[int]:
    """Where one side of a layer is measured: ``FRACTIONS`` of its dense width, rounded up
    to the side's block (the widths a selection will actually use); where a fraction falls
    below the block, the nearest efficient small width too (else a narrow path the sweep
    found would be invisible between the dense width and the block)."""
    dense = spec.out_channels if side == "out" else spec.in_channels
    chosen = {min(dense, max(block, -(-round(f * dense) // block) * block)) for f in FRACTIONS}
    for f in FRACTIONS:
        wanted = f * dense
        if small and wanted < block:
            chosen.add(min((w for w in small if w < dense), key=lambda w: abs(w - wanted), default=dense))
    return sorted(chosen - {dense})


def build_latency_table(
    specs: dict[str, LayerSpec],
    *,
    model_name: str = "model",
    provider: str = "cpu",
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    timer: Callable[..., float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> LatencyTable:
    """Measure (or load) the table for ``specs`` (module path -> LayerSpec).

    ``timer(spec, cin, cout, spatial=None) -> ms`` replaces the onnxruntime timer (tests).
    """
    providers = resolve_providers(provider)
    print_ = fingerprint(specs, model_name, providers[0], threads)
    path = cache_path(print_, cache_dir)
    say = progress or (lambda message: None)
    if use_cache and path.is_file():
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text()))
            if table.fingerprint == print_:
                say(f"latency table: cache hit {path}")
                return table
        except (ConfigError, KeyError, ValueError, TypeError):
            pass  # a stale or damaged cache entry is rebuilt
    table = LatencyTable(print_)
    timer = _Counted(timer or Timer(providers, threads), table)
    started = time.perf_counter()
    measurable = {n: s for n, s in specs.items() if s.measurable()}
    # 1. blocks: one sweep per kind and side, on the kind's most expensive layer
    by_side: dict[str, LayerSpec] = {}
    for spec in measurable.values():
        for side in (("out",) if spec.depthwise else ("in", "out")):
            key = f"{spec.category}/{side}"
            if key not in by_side or _work(spec) > _work(by_side[key]):
                by_side[key] = spec
    isa = isa_block(providers[0])
    for key, spec in sorted(by_side.items()):
        say(f"latency table: sweeping {key} widths 1..{SWEEP_WIDTHS[-1]} ({SWEEP_REPEATS} passes)")
        side = key.rsplit("/", 1)[1]
        stand_in, spatial, other = _sweep_spec(spec, side)
        sweep, spread = sweep_times(timer, stand_in, spatial, side, other, spec.depthwise)
        timer.clear()
        evidence = {"isa": isa[0] if isa else None, "repeats": SWEEP_REPEATS, "spread": round(spread, 3)}
        table.sweeps[key] = sweep
        table.blocks[key], table.small[key] = discover_block(sweep, isa[1] if isa else None, evidence)
        table.evidence[key] = evidence
    say("latency table: blocks " + ", ".join(f"{k} {v}" for k, v in sorted(table.blocks.items())))
    # 2. every distinct layer
    distinct: dict[str, tuple[str, LayerSpec]] = {}
    for name, spec in measurable.items():
        distinct.setdefault(spec.key, (name, spec))
    for index, (key, (name, spec)) in enumerate(distinct.items(), 1):
        if index % 10 == 1:
            say(f"latency table: layer {index}/{len(distinct)} ({name})")
        table.layers[key] = _measure_layer(spec, table, timer)
    table.seconds = time.perf_counter() - started
    if use_cache:
        try:
            table.save(path)
            say(f"latency table: {len(distinct)} layers in {table.seconds:.0f} s, cached at {path}")
        except OSError:
            say(f"latency table: could not write the cache at {path}")
    return table


class _Counted:
    """Counts the measurements a table cost."""

    def __init__(self, timer, table: LatencyTable):
        self.timer, self.table = timer, table

    def __call__(self, *args) -> float:
        self.table.measurements += 1
        return self.timer(*args)

    def clear(self) -> None:
        getattr(self.timer, "clear", lambda: None)()


def _work(spec: LayerSpec) -> int:
    return math.prod(spec.input_shape) * spec.out_channels


def _measure_layer(spec: LayerSpec, table: LatencyTable, timer) -> dict[str, Any]:
    cin, cout = spec.in_channels, spec.out_channels
    dense = timer(spec, cin, cout)
    entry: dict[str, Any] = {"dense": dense, "out": {cout: dense}, "in": {cin: dense}}
    if spec.depthwise:
        for width in widths_to_measure(spec, "out", table.block_for(spec, "out"), table.small_for(spec, "out")):
            if width != cout:
                entry["out"][width] = timer(spec, width, width)
        entry["base"] = 0.0
        entry["in"] = {}
        return entry
    for side in ("out", "in"):
        for width in widths_to_measure(spec, side, table.block_for(spec, side), table.small_for(spec, side)):
            if width not in entry[side]:
                entry[side][width] = timer(spec, cin, width) if side == "out" else timer(spec, width, cout)
    # corner: both sides at their smallest measured width -> the time that does not shrink
    small_in, small_out = min(entry["in"]), min(entry["out"])
    base = 0.0
    if small_in < cin and small_out < cout:
        corner = timer(spec, small_in, small_out)
        t_out, t_in = entry["out"][small_out], entry["in"][small_in]
        denominator = corner + dense - t_out - t_in
        if abs(denominator) > 1e-9:
            base = (corner * dense - t_out * t_in) / denominator
        entry["corner"] = [small_in, small_out, corner]
    floor = min(min(entry["out"].values()), min(entry["in"].values()))
    entry["base"] = float(min(max(base, 0.0), 0.9 * floor))
    return entry


# --------------------------------------------------------------------------- plot


def plot_latency_vs_width(table: LatencyTable, specs: dict[str, LayerSpec], png_path: str | os.PathLike,
                          top: int = 6) -> Path:  # fmt: skip
    """PNG: measured latency vs kept output width (input dense) for the ``top`` costliest
    layers, with the table's model (padded to the block) drawn as a step line."""
    names = {}
    for name, spec in specs.items():
        if spec.key in table.layers:
            names.setdefault(spec.key, (name, spec))
    costly = sorted(names.values(), key=lambda item: -table.layers[item[1].key]["dense"])[:top]
    if not costly:
        raise ConfigError("the latency table has no measured layer to plot")
    figure, axes = new_figure(len(costly), width=3.2)
    for ax, (name, spec) in zip(axes, costly):
        entry = table.layers[spec.key]
        widths = sorted(entry["out"])
        ax.plot(widths, [entry["out"][w] for w in widths], "o", color="tab:orange", label="measured")
        every = range(1, spec.out_channels + 1)
        ax.plot(list(every), [table.layer_ms(spec, spec.in_channels, w) for w in every], "-",
                color="tab:blue", linewidth=1, label="model")  # fmt: skip
        ax.set(title=f"{name}\n{spec.category} {spec.in_channels}->{spec.out_channels}",
               xlabel="kept output channels", ylabel="ms")  # fmt: skip
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    return save_figure(figure, png_path)


def model_width_plot(model: nn.Module, example_inputs, png_path: str | os.PathLike, *, provider: str = "cpu",
                     threads: int | None = 1, cache_dir: str | os.PathLike | None = None, top: int = 6,
                     progress: Callable[[str], None] | None = None) -> Path:  # fmt: skip
    """Build (or load from the cache) ``model``'s latency table and plot its costliest
    layers' latency vs width: the plot behind ``fxprune profile --width-plot``."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    specs = layer_specs(model, inputs)
    table = build_latency_table(specs, model_name=type(model).__name__, provider=provider,
                                threads=threads, cache_dir=cache_dir, progress=progress)  # fmt: skip
    return plot_latency_vs_width(table, specs, png_path, top)


__all__ = ["LatencyTable", "LayerSpec", "Timer", "block_agreement", "build_latency_table", "cache_path",
           "default_cache_dir", "discover_block", "fingerprint", "isa_block", "layer_onnx", "layer_specs",
           "model_width_plot", "plot_latency_vs_width", "sweep_times", "widths_to_measure"]
