"""Coverage sweep: prune every model of a zoo with fxprune and with Torch-Pruning.

Each (model, tool) pair runs in its own process with a wall-clock and a memory cap, one torch thread,
random weights (nothing is downloaded; zero-initialised weights get random values, see
``unzero``). fxprune's result is checked by the masked-dense
oracle (exact where the channel classes allow it, structural otherwise: the slim model
runs and gives outputs of the same shapes); Torch-Pruning's by running the pruned model,
its own success criterion. A model counts as a success for a tool when the pruned model
is smaller, runs and (for fxprune) passes the oracle.

    python tools/zoo_sweep.py --suite detection --suite timm --timm-families 20 --out sweep/
    python tools/zoo_sweep.py --suite classification --models 'resnet*' --tools fxprune

Suites: classification, segmentation, detection, video (torchvision) and timm (the
smallest model of each timm family, i.e. model module, chosen by parameter count on the
meta device). Writes ``sweep.json`` and ``sweep.md`` into ``--out`` after every run and
prints one progress line per run. It resumes: a (model, tool) pair already in ``sweep.json``
is skipped (``--rerun`` runs it again), so a long sweep can be run in chunks
(``--timm-families 36-98``). A fxprune result whose slim model fails to run or to match
the oracle is "broken" / "oracle failed", the outcome the sweep exists to rule out.

Settings, identical for both tools: 50% of the channels of every prunable group removed
by L1 magnitude (fxprune: ``ratio=0.5, min_ratio=0.15, scorer="l1"``; Torch-Pruning:
``GroupMagnitudeImportance(p=1)``, ``pruning_ratio=0.5``, its recipe's ignored layers and
attention heads).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SUITES = ("classification", "segmentation", "detection", "video", "timm")
TOOLS = ("fxprune", "tp")
RATIO = 0.5

# torchvision models that need another input than (1, 3, 224, 224); detection models get
# their transform's min/max size set to --det-size (fixed-size SSD models resize anyway)
INPUT_SHAPES = {"inception_v3": (1, 3, 299, 299), "googlenet": (1, 3, 224, 224)}
VIDEO_SHAPES = {"mvit_v1_b": (1, 3, 16, 224, 224), "mvit_v2_s": (1, 3, 16, 224, 224),
                "s3d": (1, 3, 16, 224, 224)}  # its final pool needs 224 px
SKIP = {"raft_large": "optical flow: two image inputs", "raft_small": "optical flow: two image inputs"}


# -- model lists ------------------------------------------------------------------------


def torchvision_models(suite: str) -> list[str]:
    import torchvision.models as tvm

    module = {"classification": tvm, "segmentation": tvm.segmentation,
              "detection": tvm.detection, "video": tvm.video}[suite]
    return sorted(tvm.list_models(module=module))


def timm_smallest(cache: Path, families: slice = slice(None)) -> list[str]:
    """The smallest model (parameter count on the meta device) of each timm module
    (``families``: which of the sorted modules)."""
    import timm
    import torch

    known = json.loads(cache.read_text()) if cache.is_file() else {}
    modules = sorted(m for m in timm.list_modules() if timm.list_models(module=m))
    modules = modules[families]
    for module in modules:
        if module in known:
            continue
        best = None
        for name in timm.list_models(module=module):
            try:
                with torch.device("meta"):
                    model = timm.create_model(name, pretrained=False)
                count = sum(p.numel() for p in model.parameters())
            except Exception:  # noqa: BLE001, S112 - a model that does not build on meta: skip it
                continue
            if best is None or count < best[1]:
                best = (name, count)
        known[module] = best[0] if best else None
        cache.write_text(json.dumps(known, indent=1))
    return [known[m] for m in modules if known.get(m)]


def unzero(model) -> int:
    """Give zero-initialised weights random values (torchvision's ViT classifier, the last
    norm of residual branches): with them a random-weight model outputs zeros, or a branch
    adds nothing, and the oracle compares nothing there. Returns how many were changed."""
    import torch

    changed = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.is_floating_point() and p.numel() > 1 and not p.any():
                torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.uniform_(p, 0.5, 1.5)
                changed += 1
    return changed


def build(suite: str, name: str, det_size: int):
    """(model in eval mode, example input tuple), random weights."""
    import torch

    if suite == "timm":
        import timm

        model = timm.create_model(name, pretrained=False).eval()
        shape = (1, *model.pretrained_cfg.get("input_size", (3, 224, 224)))
        return model, (torch.randn(*shape),)
    import torchvision

    kwargs: dict[str, Any] = {"weights": None}
    shape = INPUT_SHAPES.get(name, (1, 3, 224, 224))
    if suite == "detection":
        kwargs["weights_backbone"] = None
        if not name.startswith("ssd"):
            kwargs.update(min_size=det_size, max_size=det_size)
        shape = (1, 3, det_size, det_size)
    elif suite == "segmentation":
        kwargs["weights_backbone"] = None
    elif suite == "video":
        shape = VIDEO_SHAPES.get(name, (1, 3, 8, 112, 112))
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    model = torchvision.models.get_model(name, **kwargs).eval()
    return model, (torch.randn(*shape),)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# -- workers (run in a child process) ---------------------------------------------------


def run_fxprune(model, inputs) -> dict[str, Any]:
    import warnings

    import fxprune
    from fxprune.verify import verify_equivalence

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fxprune.prune(model, inputs, ratio=RATIO, min_ratio=0.15, scorer="l1")
    # from here on a failure means prune returned something broken, the worst outcome
    STAGE[0] = "verify"
    parts = getattr(result, "parts", None)
    if parts is not None:  # an untraceable root: each traced part is checked on its own
        reports = result.verify()
    else:
        reports = [verify_equivalence(result.graph, result.keep, result.model, inputs)]
    import torch

    STAGE[0] = "run"
    with torch.no_grad():
        result.model(*inputs)  # the whole slim model runs
    leaves = [str(leaf) for leaf in getattr(result, "leaves", [])]
    exact = all(r.exact for r in reports)
    out = {
        "params_before": result.params_before,
        "params_after": result.params_after,
        "macs_before": getattr(result, "macs_before", None),
        "macs_after": getattr(result, "macs_after", None),
        "exact": exact,
        "oracle_kind": "exact" if exact else "structural",
        "oracle": "; ".join(r.detail for r in reports[:3]),
        "leaves": leaves,
        "parts": None if parts is None else [p.qualname for p in parts],
        "warnings": [str(w.message).splitlines()[0] for w in caught][:3],
    }
    if not all(r.passed for r in reports):
        out["status"] = "oracle failed"
    elif result.params_after >= result.params_before:
        out["status"] = "nothing pruned"
    else:
        out["status"] = "ok"
    return out


def run_tp(model, inputs, suite: str, name: str) -> dict[str, Any]:
    import torch
    import torch_pruning as tp
    from torch import nn

    ignored = _tp_ignored_layers(model, suite, name)
    num_heads = {}
    try:
        from timm.models.vision_transformer import Attention

        num_heads = {m.qkv: m.num_heads for m in model.modules() if isinstance(m, Attention)}
    except ImportError:
        pass
    channel_groups = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    before = count_params(model)
    example = inputs[0] if len(inputs) == 1 else list(inputs)
    macs_before = _tp_macs(tp, model, example)
    pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=RATIO, ignored_layers=ignored, num_heads=num_heads,
                                  channel_groups=channel_groups, global_pruning=False)
    pruner.step()
    for m in model.modules():  # the recipe's fix-up of timm attention after pruning
        if hasattr(m, "num_heads") and hasattr(m, "qkv") and m.qkv in num_heads:
            m.num_heads = num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):  # timm >= 1.0 reshapes by attn_dim, not the input width
                m.attn_dim = m.qkv.out_features // 3
    if hasattr(model, "hidden_dim") and hasattr(model, "conv_proj"):  # torchvision ViT
        model.hidden_dim = model.conv_proj.out_channels
    with torch.no_grad():
        model(*inputs)
    after = count_params(model)
    return {"params_before": before, "params_after": after,
            "macs_before": macs_before, "macs_after": _tp_macs(tp, model, example),
            "status": "ok" if after < before else "nothing pruned"}


def _tp_macs(tp, model, example) -> int | None:
    """Torch-Pruning's own MAC count (None where its counter fails on the model)."""
    try:
        macs, _ = tp.utils.count_ops_and_params(model, example)
        return int(macs)
    except Exception:  # noqa: BLE001 - Torch-Pruning cannot count this model: no figure
        return None


def _tp_ignored_layers(model, suite: str, name: str) -> list:
    """Torch-Pruning's own recipes: the classifier, and for detectors the output heads."""
    from torch import nn

    ignored = []
    if suite == "timm":
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))] or [head]
            ignored.append(linears[-1])
        return ignored
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == 1000:
            ignored.append(m)
    if suite == "segmentation" and hasattr(model, "classifier"):
        ignored.append(model.classifier)
        if getattr(model, "aux_classifier", None) is not None:
            ignored.append(model.aux_classifier)
    if suite == "detection":
        if name.startswith("ssd"):
            ignored.append(model.head)
        for path in ("rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads",
                     "head.classification_head.cls_logits", "head.regression_head.bbox_reg",
                     "head.regression_head.bbox_ctrness", "backbone.fpn"):
            try:
                ignored.append(model.get_submodule(path))
            except AttributeError:
                pass
    return ignored


# the worker's current stage: "build", "prune" (the tool itself), then for fxprune "verify"
# and "run" (checking what prune returned: an error there is a broken slim model)
STAGE = ["build"]


def worker(tool: str, suite: str, name: str, det_size: int, out_file: str) -> None:
    import resource

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    started = time.perf_counter()
    try:
        model, inputs = build(suite, name, det_size)
        info: dict[str, Any] = {"input": list(inputs[0].shape), "unzeroed": unzero(model)}
        STAGE[0] = "prune"
        if tool == "fxprune":
            info.update(run_fxprune(model, inputs))
        else:
            info.update(run_tp(model, inputs, suite, name))
    except Exception as exc:  # noqa: BLE001 - every failure is a result of the sweep, not a crash
        text = str(exc).strip().splitlines()
        broken = tool == "fxprune" and STAGE[0] in ("verify", "run")
        info = {"status": "broken" if broken else "error", "stage": STAGE[0],
                "error": f"{type(exc).__name__}: {text[0][:300] if text else ''}"}
    info["seconds"] = round(time.perf_counter() - started, 2)
    info["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    Path(out_file).write_text(json.dumps(info))


# -- driver -----------------------------------------------------------------------------


def _rss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run_one(tool: str, suite: str, name: str, det_size: int, timeout: float,
            mem_gb: float) -> dict[str, Any]:
    """One (tool, model) run in its own process, killed past ``timeout`` seconds or
    ``mem_gb`` GB of resident memory (the machine is shared)."""
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "result.json")
        err_file = os.path.join(tmp, "stderr.txt")
        cmd = [sys.executable, __file__, "--worker", tool, suite, name, str(det_size), out_file]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        started = time.perf_counter()
        load = os.getloadavg()[0]
        killed = None
        with open(err_file, "w") as stderr:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                                    start_new_session=True)
            while proc.poll() is None:
                elapsed = time.perf_counter() - started
                if elapsed > timeout:
                    killed = {"status": "timeout", "error": f"over {timeout:.0f} s"}
                elif _rss_gb(proc.pid) > mem_gb:
                    killed = {"status": "memory cap", "error": f"over {mem_gb:g} GB resident"}
                if killed:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    break
                time.sleep(0.5)
        seconds = round(time.perf_counter() - started, 1)
        if killed:
            return {**killed, "seconds": seconds, "load": load}
        if not os.path.exists(out_file):
            last = Path(err_file).read_text(errors="replace").strip().splitlines()
            return {"status": "crashed", "error": f"exit {proc.returncode}: {last[-1][:300] if last else ''}",
                    "seconds": seconds, "load": load}
        return {**json.loads(Path(out_file).read_text()), "load": load}


def describe(result: dict[str, Any]) -> str:
    status = result.get("status", "?")
    if status == "ok" and result.get("params_before"):
        ratio = result["params_before"] / max(1, result["params_after"])
        extra = f" params {ratio:.2f}x"
        if result.get("macs_before"):
            extra += f", MACs {result['macs_before'] / max(1, result['macs_after']):.2f}x"
        if "exact" in result:
            extra += ", oracle exact" if result["exact"] else ", oracle structural"
        if result.get("leaves"):
            extra += f", {len(result['leaves'])} leaves"
        if result.get("parts"):
            extra += f", {len(result['parts'])} parts"
        return status + extra
    return f"{status}: {result.get('error') or result.get('oracle') or ''}".rstrip(": ")


def markdown(rows: list[dict[str, Any]], tools: list[str], commands: list[str], settings: str) -> str:
    lines = ["# Zoo sweep\n", settings + "\n", "Commands (the sweep resumes: each adds the models it has not run yet):\n",
             "```text", *commands, "```\n", "## Totals\n",
             "| suite | models | " + " | ".join(f"{t} ok" for t in tools) + " | fxprune broken |",
             "|---|---|" + "---|" * (len(tools) + 1)]
    for suite in dict.fromkeys(r["suite"] for r in rows):
        in_suite = [r for r in rows if r["suite"] == suite]
        oks = [sum(1 for r in in_suite if r.get(t, {}).get("status") == "ok") for t in tools]
        broken = sum(1 for r in in_suite if r.get("fxprune", {}).get("status") in ("broken", "oracle failed"))
        lines.append(f"| {suite} | {len(in_suite)} | " + " | ".join(str(k) for k in oks) + f" | {broken} |")
    lines += ["", "## Models\n", "| suite | model | " + " | ".join(tools) + " |",
              "|---|---|" + "---|" * len(tools)]
    for r in rows:
        cells = []
        for t in tools:
            result = r.get(t, {"status": "not run"})
            cell = describe(result)
            if "seconds" in result:
                cell += f" ({result['seconds']:.0f} s)"
            cells.append(cell.replace("|", "/"))
        lines.append(f"| {r['suite']} | {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _families(spec: str | None) -> slice:
    """``--timm-families``: "N" (the first N) or "A-B" (families A to B, 1-based)."""
    if not spec:
        return slice(None)
    first, _, last = spec.partition("-")
    return slice(int(first) - 1, int(last)) if last else slice(0, int(first))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        tool, suite, name, det_size, out_file = argv[1:6]
        worker(tool, suite, name, int(det_size), out_file)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", action="append", choices=SUITES, help="repeatable; default: all")
    parser.add_argument("--tools", default="fxprune,tp", help="comma-separated: fxprune,tp")
    parser.add_argument("--models", default="*", help="fnmatch filter on model names")
    parser.add_argument("--names", default=None, help="comma-separated model names instead of the suite's list")
    parser.add_argument("--timm-families", default=None,
                        help="N (the first N timm families) or A-B (families A to B, 1-based)")
    parser.add_argument("--limit", type=int, default=None, help="at most N models per suite")
    parser.add_argument("--det-size", type=int, default=128, help="detection input size (default 128)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run (default 300)")
    parser.add_argument("--mem-gb", type=float, default=8.0,
                        help="kill a run past this resident memory (default 8 GB)")
    parser.add_argument("--rerun", action="store_true",
                        help="run again the (model, tool) pairs already in sweep.json (after a fix)")
    parser.add_argument("--out", type=Path, default=Path("sweep"), help="folder for sweep.json/sweep.md")
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="merge this folder's sweep.json into --out (a chunk run elsewhere); runs nothing")
    args = parser.parse_args(argv)
    if args.merge:
        return _merge(args.out, args.merge)
    tools = [t for t in args.tools.split(",") if t]
    if any(t not in TOOLS for t in tools):
        parser.error(f"--tools: choose from {','.join(TOOLS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python tools/zoo_sweep.py " + " ".join(argv)
    plan: list[tuple[str, str]] = []
    for suite in args.suite or SUITES:
        if args.names:
            names = args.names.split(",")
        elif suite == "timm":
            names = timm_smallest(args.out / "timm_smallest.json", _families(args.timm_families))
        else:
            names = torchvision_models(suite)
        names = [n for n in names if fnmatch.fnmatch(n, args.models) and n not in SKIP]
        plan += [(suite, n) for n in names[: args.limit]]
    # resume: earlier results stay, in their order; a pair already run is skipped
    previous = json.loads((args.out / "sweep.json").read_text()) if (args.out / "sweep.json").is_file() else {}
    rows: list[dict[str, Any]] = previous.get("results", [])
    commands: list[str] = previous.get("commands", [])
    commands.append(f"{command}  # cap {args.timeout:.0f} s, {args.mem_gb:g} GB")
    by_key = {(r["suite"], r["model"]): r for r in rows}
    for index, (suite, name) in enumerate(plan, 1):
        row = by_key.get((suite, name))
        if row is None:
            row = by_key[suite, name] = {"suite": suite, "model": name}
            rows.append(row)
        for tool in tools:
            if tool in row and not args.rerun:
                continue
            row[tool] = {"tool": tool, **run_one(tool, suite, name, args.det_size, args.timeout, args.mem_gb),
                         "cap_s": args.timeout}
            print(f"[{index}/{len(plan)}] {suite}:{name} {tool}: {describe(row[tool])} "
                  f"({row[tool].get('seconds', '?')} s, load {row[tool]['load']:.1f})", flush=True)
            _write(args.out, rows, commands)
    _write(args.out, rows, commands)
    totals = {suite: {t: sum(1 for r in rows if r["suite"] == suite and r.get(t, {}).get("status") == "ok")
                      for t in TOOLS} | {"models": sum(1 for r in rows if r["suite"] == suite)}
              for suite in dict.fromkeys(r["suite"] for r in rows)}
    print(json.dumps(totals))
    return 0


def _merge(out: Path, folders: list[Path]) -> int:
    """Fold other sweeps' results into ``out``: a (model, tool) result from a merged
    folder replaces the one in ``out``; models new to ``out`` are appended in order."""
    target = out / "sweep.json"
    data = json.loads(target.read_text()) if target.is_file() else {"commands": [], "results": []}
    rows, commands = data["results"], data["commands"]
    by_key = {(r["suite"], r["model"]): r for r in rows}
    for folder in folders:
        other = json.loads((folder / "sweep.json").read_text())
        commands += [c for c in other.get("commands", []) if c not in commands]
        for incoming in other["results"]:
            row = by_key.get((incoming["suite"], incoming["model"]))
            if row is None:
                row = by_key[incoming["suite"], incoming["model"]] = {"suite": incoming["suite"],
                                                                       "model": incoming["model"]}
                rows.append(row)
            row.update({t: incoming[t] for t in TOOLS if t in incoming})
    out.mkdir(parents=True, exist_ok=True)
    _write(out, rows, commands)
    return 0


def _write(out: Path, rows: list[dict[str, Any]], commands: list[str]) -> None:
    from fxprune.io import atomic_write_json, atomic_write_text

    settings = (f"Ratio {RATIO} by L1 for both tools (fxprune min_ratio 0.15), random weights, one torch "
                "thread, each (model, tool) in its own process with the cap given with each command.")
    rows = sorted(rows, key=lambda r: SUITES.index(r["suite"]))  # stable: a suite's own order stays
    atomic_write_json(out / "sweep.json", {"commands": commands, "ratio": RATIO, "results": rows})
    atomic_write_text(out / "sweep.md", markdown(rows, list(TOOLS), commands, settings))


if __name__ == "__main__":
    sys.exit(main())
