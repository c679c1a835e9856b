"""Heads and per-class verification on the transformers of ``benchmarks/transformers.py``.

For each model and setting, with ``heads="dims"`` and ``heads="both"``: parameters after
pruning, attention heads and head dims kept (all blocks together), and how the slim model
was checked (``fxprune.verify``): the share of the pruned channel classes checked
numerically against the masked dense model (the rest, LayerNorm'd residual classes, are
checked structurally), the max difference, and the seconds prune and verify took.

    python benchmarks/heads_verify.py
    python benchmarks/heads_verify.py --models gpt,deit_tiny --settings l1-uniform
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
import warnings
from pathlib import Path

import torch

import fxprune

SETTINGS = {  # name: (scorer, ratio, min_ratio, uniform)
    "l1-uniform": ("l1", 0.5, 0.15, True),
    "l1-global": ("l1", 0.5, 0.15, False),
    "synflow": ("synflow", 0.85, 0.15, False),
}


def transformers_benchmark():
    """``benchmarks/transformers.py`` by path (its module name shadows the HF package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transformers.py")
    spec = importlib.util.spec_from_file_location("fxprune_transformers_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unzero_last_layers(model: torch.nn.Module) -> None:
    """torchvision's ViT zero-initialises its classifier, so with random weights every
    output is 0 and the oracle compares nothing: give such layers random weights."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                torch.nn.init.normal_(m.weight, std=0.02)


def run(model, x, setting: str, heads: str) -> dict:
    scorer, ratio, min_ratio, uniform = SETTINGS[setting]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fxprune.prune(model, x, ratio=ratio, min_ratio=min_ratio, scorer=scorer,
                               heads=heads, uniform=uniform)
    t1 = time.perf_counter()
    report = fxprune.verify_equivalence(result.graph, result.keep, result.model, (x,))
    t2 = time.perf_counter()
    blocks = result.summary().get("attention", [])
    return {
        "params": result.params_after,
        "heads": (sum(b["heads_before"] for b in blocks), sum(b["heads_after"] for b in blocks)),
        "head_dims": sorted({d for b in blocks for d in b["head_dims_after"]}),
        "passed": report.passed,
        "numeric": report.numeric_fraction,
        "pruned_classes": report.pruned_classes,
        "max_diff": report.max_abs_diff,
        "prune_s": t1 - t0,
        "verify_s": t2 - t1,
    }


def main() -> None:
    bench = transformers_benchmark()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(bench.MODELS))
    parser.add_argument("--settings", default="l1-uniform,synflow",
                        help=f"comma-separated, from {list(SETTINGS)}")
    parser.add_argument("--heads", default="dims,both")
    args = parser.parse_args()
    torch.set_num_threads(2)
    loadavg = Path("/proc/loadavg")
    print(f"load {loadavg.read_text().split()[:3]}" if loadavg.exists() else "")
    print("| model | setting | heads | dense | params after | heads kept | head dims | "
          "checked numerically | max diff | prune s | verify s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, x = bench.build(name)
        unzero_last_layers(model)
        dense = sum(p.numel() for p in model.parameters())
        for setting in args.settings.split(","):
            for heads in args.heads.split(","):
                r = run(model, x, setting, heads)
                ok = "" if r["passed"] else " FAILED"
                print(f"| {name} | {setting} | {heads} | {dense / 1e6:.2f}M | {r['params'] / 1e6:.2f}M | "
                      f"{r['heads'][1]}/{r['heads'][0]} | {'/'.join(map(str, r['head_dims']))} | "
                      f"{100 * r['numeric']:.1f}% of {r['pruned_classes']:,}{ok} | {r['max_diff']:.2g} | "
                      f"{r['prune_s']:.0f} | {r['verify_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
