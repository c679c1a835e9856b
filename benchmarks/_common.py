"""Helpers shared by the benchmark scripts: models, sessions, interleaved timing, tables.

Benchmarks measure side by side in one run (see STYLE.md, "Measure in benchmarks");
this module holds what they all need so each script is only its own experiment:

* ``SPECS`` / ``build_model``: the dense models (``weights=None``) and their inputs;
* ``open_session`` / ``random_feed``: onnxruntime set up as ``fxprune.deploy.runtime`` does;
* ``Timing`` / ``time_interleaved``: rounds alternating several sessions on one feed,
  with per-round slot medians for a paired speed-up robust to load that comes and goes;
* ``add_common_args`` / ``add_hpo_network_args`` / ``split_list``: argparse bits (--threads,
  --seed, --quick, --json; the HPO benchmarks' --model, --data, --data-dir);
* ``count`` / ``first_line`` / ``environment_line`` / ``write_json``: table and report text.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # "cifar" (fxprune.models) | "torchvision"
    ratio: float  # the pruning ratio the benchmarks use for it
    size: int  # input side in pixels


SPECS: dict[str, ModelSpec] = {
    "resnet56": ModelSpec("resnet56", "cifar", 0.85, 32),
    "vgg16_bn": ModelSpec("vgg16_bn", "cifar", 0.85, 32),
    "mobilenetv2": ModelSpec("mobilenetv2", "cifar", 0.85, 32),
    "resnet50": ModelSpec("resnet50", "torchvision", 0.5, 224),
    "mobilenet_v2": ModelSpec("mobilenet_v2", "torchvision", 0.5, 224),
}


def build_model(name: str, seed: int, batch: int = 1):
    """(dense model in eval mode, input of ``batch`` examples) for a name in SPECS."""
    import torch

    spec = SPECS[name]
    torch.manual_seed(seed)
    if spec.source == "cifar":
        from fxprune.models import create_model

        model = create_model(name)
    else:
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
    return model.eval(), torch.randn(batch, 3, spec.size, spec.size)


# --------------------------------------------------------------------------- sessions


def open_session(path, threads: int | None, provider: str = "cpu", profile_prefix: str | None = None):
    """An onnxruntime session set up exactly as ``fxprune.deploy`` sets them up."""
    from fxprune.deploy.runtime import open_session as deploy_session
    from fxprune.deploy.runtime import resolve_providers

    return deploy_session(Path(path), resolve_providers(provider), threads,
                          profile_prefix=profile_prefix)  # fmt: skip


def random_feed(session, batch: int) -> dict[str, Any]:
    import numpy as np

    node = session.get_inputs()[0]
    shape = [batch, *node.shape[1:]]
    return {node.name: np.random.default_rng(0).standard_normal(shape).astype("float32")}


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    warmup: int = 3
    min_rounds: int = 7
    min_seconds: float = 6.0  # per (model group, batch), all models together
    max_seconds: float = 120.0  # stop after this once 3 rounds are done
    slot_seconds: float = 0.3  # per model per round


FULL = Timing()
QUICK = Timing(warmup=2, min_rounds=3, min_seconds=1.0, max_seconds=20.0, slot_seconds=0.1)


@dataclass
class Interleaved:
    """Per-model run times (ms) and per-round slot medians from ``time_interleaved``."""

    times: dict[str, list[float]]
    slots: dict[str, list[float]]
    rounds: int
    seconds: float

    def stat(self, name: str, batch: int):
        from fxprune.deploy import LatencyStat

        return LatencyStat.from_times(batch, self.times[name])

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def paired_speedup(self, base: str, other: str) -> float:
        """Median over rounds of base-slot / other-slot: robust to load that comes and goes."""
        return statistics.median(b / o for b, o in zip(self.slots[base], self.slots[other]))


def time_interleaved(sessions: dict[str, Any], feed: dict[str, Any], timing: Timing) -> Interleaved:
    """Time several sessions on one feed in alternating rounds (order rotated each round)."""
    names = list(sessions)
    reps = {}
    for name in names:
        for _ in range(timing.warmup):
            sessions[name].run(None, feed)
        tick = time.perf_counter()
        sessions[name].run(None, feed)
        once = time.perf_counter() - tick
        reps[name] = int(min(500, max(1, timing.slot_seconds // max(once, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in names}
    slots: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    rounds = 0
    while True:
        elapsed = time.perf_counter() - started
        if rounds >= timing.min_rounds and elapsed >= timing.min_seconds:
            break
        if rounds >= 3 and elapsed >= timing.max_seconds:
            break
        shift = rounds % len(names)
        order = names[shift:] + names[:shift]
        if rounds % 2:
            order = order[::-1]
        for name in order:
            slot = []
            for _ in range(reps[name]):
                tick = time.perf_counter()
                sessions[name].run(None, feed)
                slot.append((time.perf_counter() - tick) * 1e3)
            times[name] += slot
            slots[name].append(statistics.median(slot))
        rounds += 1
    return Interleaved(times, slots, rounds, time.perf_counter() - started)


# --------------------------------------------------------------------------- arguments


def add_common_args(parser: argparse.ArgumentParser, *, threads: int = 2) -> None:
    """--threads, --seed, --quick, --json: the options every timing benchmark takes."""
    parser.add_argument("--threads", type=int, default=threads, help="onnxruntime intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for init and pruning")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter timing rounds")
    parser.add_argument("--json", dest="json_path", type=Path, default=None, help="write results here")


def add_hpo_network_args(parser: argparse.ArgumentParser) -> None:
    """--model, --data, --data-dir: the HPO benchmarks' network and data (defaults: ResNet-20
    on Fashion-MNIST, the README's HPO setting)."""
    parser.add_argument("--model", default="fxprune:resnet20")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)


def split_list(text: str, known: dict | None = None, what: str = "value") -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; with ``known``, an unknown entry is an argparse error."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if known is not None:
        unknown = [item for item in items if item not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {unknown}: choose from {', '.join(known)}")
    return items


# --------------------------------------------------------------------------- text


def count(value: float | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def environment_line(threads: int | None, **extra: Any) -> str:
    """CPU, onnxruntime, torch, threads, load average, and whatever else the run set."""
    import onnxruntime as ort
    import torch

    from fxprune.deploy import cpu_model

    details = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in extra.items() if v is not None)
    return (f"CPU: {cpu_model()} ({os.cpu_count()} logical), onnxruntime {ort.__version__}, "
            f"torch {torch.__version__}, threads {threads}, 1-min load {os.getloadavg()[0]:.1f}"
            + (f", {details}" if details else ""))  # fmt: skip


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))
