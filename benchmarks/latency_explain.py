"""Why a slim model is not as fast as its MACs promise: per-op tables and diagnoses.

Used by ``latency.py`` where a model's efficiency (speed-up / MACs reduction) falls below
``--explain-below``: both ONNX files are profiled per node with onnxruntime's profiler
(``fxprune.deploy.layer_profile.op_breakdown``) and the time is broken down by kind of op
(NCHWc conv, NCHW-fallback conv, depthwise, layout reorders, BN/elementwise, ...), with
the MACs each kind actually executes and the per-run overhead outside kernels.
"""

from __future__ import annotations

import statistics


def conv_widths(model) -> list[tuple[str, int, int, int]]:
    """(name, in, out, groups) of every Conv2d."""
    from torch import nn

    return [(n, m.in_channels, m.out_channels, m.groups)
            for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]  # fmt: skip




def render_explain(r):
    from rich.table import Table

    tables = []
    for key, pair in r.explain.items():
        dense, slim = pair["dense"], pair["slim"]
        t = Table(title=f"{r.model} {key}: where the time goes (per run, onnxruntime node profile)",
                  title_justify="left")  # fmt: skip
        for h in (
            "op kind",
            "dense ms",
            "dense %",
            "slim ms",
            "slim %",
            "slim nodes",
            "dense GMAC/s",
            "slim GMAC/s",
            "kind speed-up",
        ):
            t.add_column(h, justify="left" if h == "op kind" else "right")
        kinds = list(dict.fromkeys([*slim["by_category"], *dense["by_category"]]))
        for kind in kinds:
            dk = dense["by_category"].get(kind, {"ms": 0.0, "macs": 0.0, "nodes": 0})
            sk = slim["by_category"].get(kind, {"ms": 0.0, "macs": 0.0, "nodes": 0})

            def rate(c):
                return f"{c['macs'] / c['ms'] / 1e6:.1f}" if c["macs"] and c["ms"] else ""

            t.add_row(kind, f"{dk['ms']:.2f}", f"{100 * dk['ms'] / dense['kernel_ms']:.0f}",
                      f"{sk['ms']:.2f}", f"{100 * sk['ms'] / slim['kernel_ms']:.0f}",
                      f"{sk['nodes']:.0f}", rate(dk), rate(sk),
                      f"{dk['ms'] / sk['ms']:.2f}×" if sk["ms"] and dk["ms"] else "")  # fmt: skip
        t.add_row("[dim]outside kernels (run - kernels)[/]",
                  f"{dense['gap_ms']:.2f}", "", f"{slim['gap_ms']:.2f}",
                  "", f"{slim['nodes']}", "", "", "")  # fmt: skip
        tables.append(t)
    return tables


def diagnose(r, key: str) -> list[str]:
    """A few sentences from the numbers of one per-op profile."""
    pair = r.explain[key]
    dense, slim = pair["dense"], pair["slim"]
    batch = int(key[1:])
    lines = []
    conv_macs = lambda p: sum(
        c["macs"] for k, c in p["by_category"].items() if "conv" in k or "depthwise" in k
    )
    useful_slim = r.macs_slim * batch
    executed = conv_macs(slim)
    if executed:
        lines.append(f"slim model executes {executed / max(1, useful_slim):.2f}× its counted MACs "
                     f"(dense: {conv_macs(dense) / max(1, r.macs_dense * batch):.2f}×): NCHWc pads "
                     "channel counts up to the SIMD block")  # fmt: skip
    top = list(slim["by_category"].items())[:3]
    lines.append(
        "slim time: " + ", ".join(f"{k} {100 * v['ms'] / slim['kernel_ms']:.0f}%" for k, v in top)
    )
    for kind in (
        "conv kxk (NCHWc)",
        "conv 1x1 (NCHWc)",
        "conv kxk (NCHW)",
        "conv 1x1 (NCHW)",
        "depthwise (NCHWc)",
        "depthwise (NCHW)",
    ):
        d, s = dense["by_category"].get(kind), slim["by_category"].get(kind)
        if s and s["macs"] and s["ms"]:
            dr = f"{d['macs'] / d['ms'] / 1e6:.1f}" if d and d["ms"] and d["macs"] else "—"
            lines.append(f"{kind}: {s['macs'] / s['ms'] / 1e6:.1f} GMAC/s slim vs {dr} dense")
    over_d, over_s = dense["gap_ms"], slim["gap_ms"]
    lines.append(f"per-run overhead outside kernels {over_s:.2f} ms slim / {over_d:.2f} ms dense "
                 f"= {100 * over_s / max(slim['run_ms'], 1e-9):.0f}% of the slim run; "
                 f"{slim['nodes']} slim vs {dense['nodes']} dense kernel launches, "
                 f"{1e3 * slim['kernel_ms'] / max(1, slim['nodes']):.0f} µs per slim kernel")  # fmt: skip
    widths = [w[2] for w in r.slim_convs]
    if widths:
        odd16 = sum(1 for w in widths if w % 16)
        lines.append(f"slim conv output widths: min {min(widths)}, median {statistics.median(widths):g}, "
                     f"{odd16}/{len(widths)} not a multiple of 16; "
                     f"{sum(1 for w in widths if w < 8)} narrower than 8")  # fmt: skip
    return lines


