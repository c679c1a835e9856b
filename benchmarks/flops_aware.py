"""The paper's plain Synflow rule vs our FLOPs-aware rule: structure and CPU latency.

For CIFAR ResNet-56, VGG16-BN and MobileNetV2 (``weights=None``), at ratio 0.85 and
min-ratio 0.15, for each torch seed in --seeds (the init, hence the signed Synflow
ranking, depends on it) this prunes the same dense network with

* plain        scorer "synflow" (the paper's rule: global ranking, fixed channel ratio);
* flops-aware  scorer "synflow_flops" (our score-per-MAC rule, same ratio);
* plain@MACs   scorer "synflow", target "flops=<MACs fraction plain reached>" (the budget
               mechanism; with the same scores it should give the plain structure back);
* aware@MACs   scorer "synflow_flops" at that same MACs target (extra: the FLOPs-aware
               ranking at the plain rule's MACs budget, the like-for-like structure
               comparison); --no-matched drops the two @MACs variants.

and prints params, MACs, per-stage widths (ResNet-56: mean out_channels of the inner
conv1 and residual conv2 of each stage; VGG16-BN: every conv; MobileNetV2: mean hidden /
output width per stage) and ONNX Runtime CPU latency at --batch (64), with every
variant of one seed timed interleaved with its dense model (see latency.py). Numbers are
mean ± sample std over the seeds. Variants whose kept channels equal an earlier
variant's are timed once and marked "= plain" etc.

    .venv/bin/python benchmarks/flops_aware.py
    .venv/bin/python benchmarks/flops_aware.py --models resnet56 --seeds 0 --quick --json fa.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    FULL,
    QUICK,
    Timing,
    build_model,
    count,
    open_session,
    random_feed,
    time_interleaved,
)

MODELS = ["resnet56", "vgg16_bn", "mobilenetv2"]
VARIANTS = ["dense", "plain", "flops-aware", "plain@MACs", "aware@MACs"]


# --------------------------------------------------------------------------- widths


def stage_widths(model_name: str, model) -> OrderedDict[str, float]:
    """Per-stage conv widths (out_channels), keyed by a short column label."""
    from torch import nn

    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    out: OrderedDict[str, float] = OrderedDict()
    if model_name == "resnet56":
        out["stem"] = dict(convs)["conv1"].out_channels
        for stage in (1, 2, 3):
            for part, label in (("conv1", "inner"), ("conv2", "res")):
                widths = [m.out_channels for n, m in convs
                          if n.startswith(f"layer{stage}.") and n.endswith(part)]  # fmt: skip
                out[f"L{stage} {label}"] = statistics.fmean(widths)
    elif model_name == "vgg16_bn":
        for i, (_, m) in enumerate(convs, 1):
            out[f"c{i}"] = m.out_channels
    elif model_name == "mobilenetv2":
        from fxprune.models.mobilenetv2 import CIFAR_STAGES

        stage_of = {}
        index = 1
        for s, (_, _, repeats, _) in enumerate(CIFAR_STAGES, 1):
            for _ in range(repeats):
                stage_of[index] = s
                index += 1
        hidden: dict[int, list[int]] = {}
        output: dict[int, list[int]] = {}
        for n, m in convs:
            parts = n.split(".")
            block = int(parts[1])
            if block == 0:
                out["stem"] = m.out_channels
            elif block in stage_of:
                s = stage_of[block]
                if m.groups > 1:  # the depthwise conv: the block's hidden width
                    hidden.setdefault(s, []).append(m.out_channels)
                elif n.endswith((".conv.1", ".conv.2")):  # linear projection: output width
                    output.setdefault(s, []).append(m.out_channels)
            else:
                out["last"] = m.out_channels
        for s in sorted(hidden):
            out[f"s{s} hid"] = statistics.fmean(hidden[s])
            out[f"s{s} out"] = statistics.fmean(output[s])
        out.move_to_end("last")
    else:
        for i, (_, m) in enumerate(convs, 1):
            out[f"c{i}"] = m.out_channels
    return out


# --------------------------------------------------------------------------- one seed


@dataclass
class VariantResult:
    variant: str
    params: int
    macs: int
    widths: dict[str, float]
    latency_ms: float | None = None
    speedup: float | None = None  # dense median / this median, same interleaved group
    same_as: str | None = None  # an earlier variant with identical kept channels
    channels: int | None = None


@dataclass
class SeedResult:
    model: str
    seed: int
    variants: dict[str, VariantResult] = field(default_factory=dict)
    rounds: int = 0


def run_seed(model_name: str, seed: int, args, timing: Timing, workdir: Path, log) -> SeedResult:
    import fxprune
    from fxprune.cost import count_macs, count_params
    from fxprune.deploy import export_onnx

    dense, x = build_model(model_name, seed)
    result = SeedResult(model_name, seed)
    graph = fxprune.analyze(dense, x)  # shared: prune() never changes it (keep masks match)
    result.variants["dense"] = VariantResult(
        "dense", int(count_params(dense)), int(count_macs(dense, (x,))), stage_widths(model_name, dense),
        channels=int(graph.num_classes))  # fmt: skip
    models = {"dense": dense}
    keeps: dict[str, Any] = {}

    def add(variant: str, **kw) -> Any:
        log(f"{model_name} seed {seed}: pruning {variant} ({kw})")
        r = fxprune.prune(dense, x, min_ratio=args.min_ratio, graph=graph, **kw)
        same = next(
            (k for k, v in keeps.items() if v.shape == r.keep.shape and (v == r.keep).all()), None
        )
        keeps[variant] = r.keep
        result.variants[variant] = VariantResult(variant, r.params_after, r.macs_after,
                                                 stage_widths(model_name, r.model), same_as=same,
                                                 channels=int(r.keep.sum()))  # fmt: skip
        if same is None:
            models[variant] = r.model
        return r

    plain = add("plain", ratio=args.ratio, scorer="synflow")
    add("flops-aware", ratio=args.ratio, scorer="synflow_flops")
    if args.matched:
        frac = plain.macs_after / plain.macs_before
        add("plain@MACs", scorer="synflow", target=f"flops={frac:.6f}")
        add("aware@MACs", scorer="synflow_flops", target=f"flops={frac:.6f}")

    sessions = {}
    for variant, model in models.items():
        path = workdir / f"{model_name}_s{seed}_{variant.replace('@', '_at_')}.onnx"
        export_onnx(model, x, path)
        sessions[variant] = open_session(path, args.threads)
    log(f"{model_name} seed {seed}: timing {', '.join(sessions)} interleaved at batch {args.batch}")
    measured = time_interleaved(sessions, random_feed(sessions["dense"], args.batch), timing)
    result.rounds = measured.rounds
    medians = {k: statistics.median(v) for k, v in measured.times.items()}
    for variant, v in result.variants.items():
        source = v.same_as or variant
        v.latency_ms = medians[source]
        v.speedup = medians["dense"] / medians[source]
    return result


# --------------------------------------------------------------------------- output


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], kind: str = "") -> str:
    mean, sd = mean_sd(values)
    if kind == "count":
        return f"{count(mean)} ± {count(sd)}"
    if kind == "x":
        return f"{mean:.2f}× ± {sd:.2f}"
    if kind == "w":
        return f"{mean:.1f}" if sd < 0.05 else f"{mean:.1f}±{sd:.1f}"
    return f"{mean:.1f} ± {sd:.1f}"


def render(results: list[SeedResult], args, timing: Timing):
    from rich.table import Table

    tables = []
    seeds = ",".join(str(s) for s in args.seeds)
    summary = Table(title=f"Plain Synflow vs FLOPs-aware, ratio {args.ratio} / min {args.min_ratio}, "
                          f"onnxruntime CPU {args.threads} threads, batch {args.batch}; "
                          f"mean ± std over seeds {seeds}", title_justify="left")  # fmt: skip
    for h in (
        "model",
        "variant",
        "params",
        "MACs",
        "MACs red.",
        "channels",
        f"b{args.batch} ms",
        "speed-up",
        "efficiency",
        "note",
    ):
        summary.add_column(h, justify="left" if h in ("model", "variant", "note") else "right")
    by_model: dict[str, list[SeedResult]] = {}
    for r in results:
        by_model.setdefault(r.model, []).append(r)
    for model, runs in by_model.items():
        variants = [v for v in VARIANTS if v in runs[0].variants]
        for i, variant in enumerate(variants):
            vs = [r.variants[variant] for r in runs]
            dense = [r.variants["dense"] for r in runs]
            red = [d.macs / v.macs for d, v in zip(dense, vs)]
            eff = [v.speedup / x for v, x in zip(vs, red)]
            same = sorted({v.same_as for v in vs if v.same_as})
            note = (
                f"= {', '.join(same)} ({sum(1 for v in vs if v.same_as)}/{len(vs)} seeds)"
                if same
                else ""
            )
            summary.add_row(
                model if i == 0 else "", variant, fmt([v.params for v in vs], "count"),
                fmt([v.macs for v in vs], "count"), fmt(red, "x"),
                fmt([v.channels for v in vs], "") if variant != "dense" else f"{vs[0].channels}",
                fmt([v.latency_ms for v in vs]), fmt([v.speedup for v in vs], "x"),
                fmt(eff, "x").replace("×", "") if variant != "dense" else "", note,
                end_section=i == len(variants) - 1,
            )  # fmt: skip
    tables.append(summary)
    for model, runs in by_model.items():
        variants = [v for v in VARIANTS if v in runs[0].variants]
        labels = list(runs[0].variants["dense"].widths)
        spread = "" if len(runs) < 2 else " ± std"
        t = Table(title=f"{model}: conv widths (out_channels) per stage, mean{spread} over seeds",
                  title_justify="left")  # fmt: skip
        t.add_column("stage")
        for variant in variants:
            t.add_column(variant, justify="right")
        for label in labels:
            t.add_row(label, *[fmt([r.variants[v].widths[label] for r in runs], "w")
                               for v in variants])  # fmt: skip
        tables.append(t)
    return tables


def verdict(results: list[SeedResult]) -> list[str]:
    lines = []
    by_model: dict[str, list[SeedResult]] = {}
    for r in results:
        by_model.setdefault(r.model, []).append(r)
    for model, runs in by_model.items():
        p = [r.variants["plain"] for r in runs]
        a = [r.variants["flops-aware"] for r in runs]
        line = (f"{model}: flops-aware vs plain at ratio: MACs {statistics.fmean(x.macs / y.macs for x, y in zip(a, p)):.2f}× of plain, "
                f"latency {statistics.fmean(x.latency_ms / y.latency_ms for x, y in zip(a, p)):.2f}× of plain, "
                f"params {statistics.fmean(x.params / y.params for x, y in zip(a, p)):.2f}× of plain")  # fmt: skip
        if "aware@MACs" in runs[0].variants:
            m = [r.variants["aware@MACs"] for r in runs]
            line += (f"; at plain's MACs: latency {statistics.fmean(x.latency_ms / y.latency_ms for x, y in zip(m, p)):.2f}× of plain, "
                     f"params {statistics.fmean(x.params / y.params for x, y in zip(m, p)):.2f}× of plain")  # fmt: skip
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}"
    )
    p.add_argument("--seeds", default="0,1,2", help="torch seeds (init and Synflow ranking)")
    p.add_argument("--ratio", type=float, default=0.85)
    p.add_argument("--min-ratio", type=float, default=0.15)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument(
        "--no-matched",
        dest="matched",
        action="store_false",
        help="skip the plain@MACs / aware@MACs target variants",
    )
    p.add_argument("--quick", action="store_true", help="fewer, shorter timing rounds")
    p.add_argument("--json", dest="json_path", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=None, help="keep the ONNX files here")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        p.error(f"unknown model(s) {bad}: choose from {', '.join(MODELS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def main(argv=None) -> int:
    import torch
    from rich.console import Console

    args = parse_args(argv)
    timing: Timing = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    console = Console(width=170)
    results: list[SeedResult] = []
    with tempfile.TemporaryDirectory(prefix="fxprune-flops-aware-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        for model in args.models:
            for seed in args.seeds:
                results.append(run_seed(model, seed, args, timing, workdir, console.log))
    for table in render(results, args, timing):
        console.print(table)
    for line in verdict(results):
        console.print(line)
    import onnxruntime as ort

    from fxprune.deploy import cpu_model

    console.print(f"[dim]CPU: {cpu_model()}, onnxruntime {ort.__version__}, torch {torch.__version__}; "
                  f"speed-up = dense median / variant median within one interleaved group "
                  f"(>= {timing.min_rounds} rounds); efficiency = speed-up / MACs reduction[/]")  # fmt: skip
    if args.json_path is not None:
        payload = {"settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                "timing": asdict(timing)},
                   "results": [asdict(r) for r in results]}  # fmt: skip
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(payload, indent=1))
        console.log(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
