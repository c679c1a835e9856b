"""The HPO proxy's training step against its base network's, per batch size, on this device.

A proxy search saves time only if the pruned network trains faster than the base network
where the search runs. ``hpo run --mode proxy`` and ``hpo compare`` measure one batch size
before they search (and warn below 1.5x); this script measures several, one process alone,
interleaved (``fxprune.deploy.compare_step_times``): forward + backward, median over runs,
the speed-up with its 95% interval, next to the MACs reduction. The default is the HPO
benchmark's network and data (ResNet-20, Fashion-MNIST 28x28, ``benchmarks/proxy_hpo.py``).

    .venv/bin/python benchmarks/proxy_step_time.py
    .venv/bin/python benchmarks/proxy_step_time.py --device cuda --batches 32,128,512,1024

Measured (median ms of the base network / speed-up of the proxy, which has 1/28 of the
MACs), the same measurement with ``--seconds 2``: this 2-core CPU box (2 threads, idle),
27.9 ms / 2.60x at batch 32, 120 / 3.88x at 128, 559 / 4.43x at 512, 1538 / 5.61x at 1024;
an NVIDIA H200 (torch 2.11, CUDA 13), 6.2 ms / 1.08x [0.97, 1.18] at 32, 9.5 / 1.37x at
128, 13.7 / 1.44x at 512, 26.0 / 1.58x at 1024: at 28 px both networks are bound by
per-kernel overheads on the GPU, not by arithmetic.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from _common import add_hpo_network_args


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_hpo_network_args(parser)
    parser.add_argument("--batches", default="32,128,512,1024")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the training "
                        "device HPO would use)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0, help="time bound per network "
                        "and batch size")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    from fxprune.deploy import Timing, compare_step_times
    from fxprune.errors import FxPruneError
    from fxprune.train.loop import default_device
    from hpo.config import HpoConfig
    from hpo.network import load_data, network_factory

    torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device) if args.device else default_device()
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda asked but torch sees no usable GPU here")
        batches = [int(b) for b in args.batches.split(",")]
        config = HpoConfig(model=args.model, data=args.data, data_dir=args.data_dir,
                           out="unused", threads=args.threads)
        data = load_data(config)
        factory = network_factory(config, data, "proxy")
    except (FxPruneError, ValueError, RuntimeError) as err:  # RuntimeError: a bad --device
        sys.exit(f"error: {err}")
    info = factory.proxy_info
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"{args.model} on {args.data}: proxy keeps {info.flops_after / info.flops_before:.1%} "
          f"of the MACs ({info.flops_before / info.flops_after:.1f}x fewer); device {device} "
          f"({name or platform.machine()}), torch {torch.__version__}, {args.threads} thread(s)")
    print(f"{'batch':>5} | {'base ms':>8} | {'proxy ms':>8} | speed-up [95% CI]")
    rows = []
    for batch in batches:
        indices = torch.arange(batch) % len(data.train)
        images, _ = data.batch("train", indices)
        result = compare_step_times(
            factory.base, factory.template, (images,), device=device,
            timing=Timing(warmup=3, min_runs=10, min_seconds=args.seconds / 4,
                          max_seconds=args.seconds))
        row = {"batch": batch, **result.to_dict()}
        rows.append(row)
        ci = row["speedup_ci"]
        print(f"{batch:5d} | {row['dense']['stat']['median_ms']:8.2f} | "
              f"{row['slim']['stat']['median_ms']:8.2f} | {row['speedup']:.2f}x"
              + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
