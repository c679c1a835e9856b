"""Export a model (dense or slim GraphModule) to ONNX, check it, and prove parity.

``export_onnx`` writes the file atomically (temp file in the same folder, ``os.replace``
at the end), runs ``onnx.checker``, then runs the file in onnxruntime (CPU provider) on
the example inputs *and* on a different batch size, and compares with PyTorch. Anything
that goes wrong is one ``ExportError`` line naming the model class.

Exporter choice (``exporter="auto"``, the default)
--------------------------------------------------
Measured with torch 2.15 / onnx 1.23 / onnxscript 0.7 on a 2-core CPU box, seconds per
export, warm, best of 2 (``_fx`` = the same model after ``torch.fx.symbolic_trace``)::

                     torchscript   dynamo(opset 17)   dynamo(opset 18)
    ResBN CNN 32x32       0.01          0.75              0.74
    resnet18  64x64       0.35          2.00              2.18
    mobilenet_v2 64x64    0.24          6.10              6.66
    resnet50 224x224      4.86          6.89              6.18
    ResBN CNN _fx         0.10          1.05              0.84
    resnet18 _fx          1.41          3.28              3.91
    mobilenet_v2 _fx      1.00          7.43              6.98
    resnet50 _fx          3.50          4.13              4.30

(first call in a process adds ~1-2 s of dynamo warm-up on top). Both exporters handled
every model above, GraphModules included, with max |onnxruntime - torch| <= 4e-5 at
batch 3 after exporting at batch 1. Differences found on harder modules:

* TorchScript is 1.2-75x faster and honours ``opset_version=17`` exactly. The dynamo
  exporter only implements opset >= 18 and down-converts; for mobilenet_v2 and resnet50
  that conversion fails (``axes_input_to_attribute`` assertion) and the file silently
  stays at opset 18, with a traceback logged.
* TorchScript is *unsound* on data-dependent Python control flow (``if y.sum() > 0``)
  and on Python scalars: it bakes in the branch taken / the value seen, emitting only a
  ``TracerWarning``. torch.export refuses such models instead. It also traced a forward
  that round-trips through numpy, which TorchScript cannot.
* Neither exports ops without an ONNX symbolic (``histc``, ``kthvalue``, ``linalg_svd``).
* TorchScript is deprecated since torch 2.9 and will be removed.

So "auto" uses TorchScript (fast, exact opset; slim GraphModules come from
``symbolic_trace`` and are control-flow free by construction) but *falls back to dynamo*
when TorchScript raises, is gone from torch, or emits a ``TracerWarning`` (its trace may be
input-specific). ``exporter="torchscript"|"dynamo"`` forces one. The report records the
exporter actually used and the opset actually written.

Names and dynamic axes
----------------------
Inputs are named after the forward signature's parameters, outputs after the keys of a
dict output (``output``/``output_<i>`` otherwise). ``dynamic="batch"`` (default) makes
dim 0 of every input dynamic; ``dynamic="all"`` every dim except the channel dim (dim 1)
of floating inputs with 2+ dims: each candidate dim is first tried in PyTorch at another
size (a dim the model needs fixed, e.g. before a Flatten->Linear, stays static), then the
export is run in onnxruntime at another size for each dim, and a dim it cannot run is
made static and the model re-exported. The report lists the dynamic dims and the sizes
parity was checked at. An opset torch.onnx cannot write is an error.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxprune.errors import ExportError
from fxprune.io import atomic_path

from .onnx_check import check_file, flat_outputs, grown, other_batch, parity, resized
from .quiet import deepest_reason, first_line, quiet

EXPORTERS = ("auto", "torchscript", "dynamo")
DYNAMIC = ("batch", "all", "none")
DEFAULT_OPSET = 17
MIN_OPSET = 7  # torch.onnx's oldest
MAX_OPSET = 23  # torch.onnx's newest (dynamo); TorchScript stops at 20
MAX_TORCHSCRIPT_OPSET = 20
BATCH_AXIS_NAME = "batch"


@dataclass(frozen=True)
class ExportReport:
    """Where the ONNX file went, how it was made and how close it is to PyTorch."""

    path: str
    opset: int  # the opset actually written (dynamo may keep 18 when 17 was asked)
    exporter: str  # "torchscript" or "dynamo": the one that produced the file
    max_abs_diff: float | None  # None when parity was not checked
    max_rel_diff: float | None  # max |ort - torch| / max(|torch|, atol)
    seconds: float  # wall time of export + check + parity
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    dynamic_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # input -> dims
    checked_at: tuple[str, ...] = ()  # the input sizes onnxruntime was checked at

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportReport:
        data = dict(data)
        for key in ("input_names", "output_names", "checked_at"):
            data[key] = tuple(data.get(key, ()))
        data["dynamic_axes"] = {k: tuple(v) for k, v in data.get("dynamic_axes", {}).items()}
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ExportReport:
        return cls.from_dict(json.loads(text))

    def __rich__(self):
        from rich.table import Table

        table = Table(title="ONNX export", show_header=False, title_justify="left")
        table.add_column("key", style="bold")
        table.add_column("value")
        table.add_row("file", self.path)
        table.add_row("exporter", self.exporter)
        table.add_row("opset", str(self.opset))
        if self.input_names:
            table.add_row("inputs", ", ".join(
                f"{n} (dynamic dims {', '.join(map(str, self.dynamic_axes[n]))})"
                if self.dynamic_axes.get(n) else f"{n} (static)" for n in self.input_names))  # fmt: skip
            table.add_row("outputs", ", ".join(self.output_names))
        if self.max_abs_diff is None:
            table.add_row("parity", "not checked")
        else:
            table.add_row("max abs diff", f"{self.max_abs_diff:.3g}")
            table.add_row("max rel diff", f"{self.max_rel_diff:.3g}")
            if self.checked_at:
                table.add_row("checked at", "; ".join(self.checked_at))
        table.add_row("seconds", f"{self.seconds:.2f}")
        return table


def check_opset(opset: int, exporter: str = "auto") -> None:
    """An opset torch.onnx cannot write is an error, not a silent substitute."""
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"unsupported opset {opset!r}: choose {MIN_OPSET}..{MAX_OPSET} "
                          f"(TorchScript exporter up to {MAX_TORCHSCRIPT_OPSET})")  # fmt: skip
    if exporter == "torchscript" and opset > MAX_TORCHSCRIPT_OPSET:
        raise ExportError(f"opset {opset} needs the dynamo exporter: TorchScript writes "
                          f"{MIN_OPSET}..{MAX_TORCHSCRIPT_OPSET}")  # fmt: skip


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: str = "batch",
    dynamic_batch: bool | None = None,
    check_parity: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    exporter: str = "auto",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export ``model`` to ``path`` (atomically), check the file and prove parity.

    ``dynamic``: "batch" (dim 0 of every input), "all" (every dim but the channel dim of
    floating inputs, where the model accepts another size: tried in torch, then proven
    in onnxruntime) or "none". ``dynamic_batch=False`` is the old spelling of "none".
    Input names default to the forward signature's parameter names, output names to the
    keys of a dict output. Parity is ``|ort - torch| <= atol + rtol * |torch|``
    (``np.allclose``) on ``example_inputs`` and on the other sizes of the dynamic dims.
    The model's train/eval flags are restored afterwards; export runs in eval mode.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    if dynamic_batch is not None:
        dynamic = "batch" if dynamic_batch else "none"
    if dynamic not in DYNAMIC:
        raise ExportError(f"unknown dynamic {dynamic!r}: choose one of {', '.join(DYNAMIC)}")
    check_opset(opset, exporter)
    inputs = as_inputs(example_inputs)
    name = type(model).__name__
    say = progress or (lambda message: None)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    with eval_mode(model), torch.no_grad():
        named = flat_outputs(model, inputs, name)
        expected = [tensor for _, tensor in named]
        spec = ExportSpec(
            input_names=unique(list(input_names) if input_names else signature_names(model, len(inputs))),
            output_names=unique(list(output_names) if output_names else [n for n, _ in named]),
            opset=opset,
            inputs=inputs,
            expected=expected,
            axes=candidate_axes(model, inputs, dynamic, name, say),
        )
        if len(spec.input_names) != len(inputs) or len(spec.output_names) != len(expected):
            raise ExportError(f"{name}: {len(inputs)} inputs and {len(expected)} outputs, but "
                              f"{len(spec.input_names)} input and {len(spec.output_names)} output names")  # fmt: skip
        with atomic_path(target) as tmp:  # 0644, renamed in only once checked
            used, written_opset, max_abs, max_rel, checked = _export_and_check(
                model, tmp, spec, exporter, check_parity, rtol, atol, name, say, dynamic == "all"
            )

    return ExportReport(
        path=str(target),
        opset=written_opset,
        exporter=used,
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        seconds=time.perf_counter() - start,
        input_names=tuple(spec.input_names),
        output_names=tuple(spec.output_names),
        dynamic_axes={spec.input_names[i]: tuple(dims) for i, dims in spec.axes.items() if dims},
        checked_at=tuple(checked),
    )


@dataclass
class ExportSpec:
    input_names: list[str]
    output_names: list[str]
    opset: int
    inputs: tuple[torch.Tensor, ...]
    expected: list[torch.Tensor]
    axes: dict[int, list[int]]  # input index -> its dynamic dims (0 = batch)

    def axis_label(self, index: int, dim: int) -> str:
        return BATCH_AXIS_NAME if dim == 0 else f"{self.input_names[index]}_dim{dim}"


def _export_and_check(model, tmp, spec, exporter, check_parity, rtol, atol, name, say, prove_each):
    """Export, check, and run parity; with ``prove_each`` ("all"), a non-batch dim that
    onnxruntime cannot run at another size is made static and the model re-exported."""
    while True:
        say(f"exporting {name} to ONNX (opset {spec.opset}, exporter {exporter})")
        used = _export_with(exporter, model, spec.inputs, tmp, spec, name)
        written_opset = check_file(tmp, name)
        if not check_parity:
            return used, written_opset, None, None, []
        cases = [("the example inputs", spec.inputs, spec.expected)]
        if prove_each:
            failing = []
            for index, dims in spec.axes.items():
                for dim in [d for d in dims if d != 0]:
                    case = _case(model, spec, {index: [dim]}, name)
                    if case is None:
                        continue
                    say(f"checking {spec.input_names[index]} dim {dim} at size {case[1][index].shape[dim]} in onnxruntime")
                    try:
                        parity(tmp, [case], spec.input_names, spec.output_names,
                               rtol=rtol, atol=atol, name=name)  # fmt: skip
                    except ExportError:
                        failing.append((index, dim))
            if failing:
                for index, dim in failing:
                    spec.axes[index].remove(dim)
                say("static after all: " + ", ".join(f"{spec.input_names[i]} dim {d}" for i, d in failing))
                continue
        every = _case(model, spec, spec.axes, name)
        if every is not None:
            cases.append(every)
        say(f"checking parity with PyTorch in onnxruntime at {len(cases)} input sizes")
        max_abs, max_rel = parity(tmp, cases, spec.input_names, spec.output_names,
                                  rtol=rtol, atol=atol, name=name)  # fmt: skip
        return used, written_opset, max_abs, max_rel, [label for label, _, _ in cases]


def _case(model, spec: ExportSpec, axes: dict[int, list[int]], name: str):
    """(label, inputs, expected) with every dim in ``axes`` at another size, or None."""
    sizes = {}
    for index, dims in axes.items():
        shape = spec.inputs[index].shape
        sizes[index] = {d: other_batch(shape[0]) if d == 0 else grown(shape[d]) for d in dims}
    if not any(sizes.values()):
        return None
    inputs = resized(spec.inputs, sizes)
    expected = [tensor for _, tensor in flat_outputs(model, inputs, name)]
    label = "; ".join(f"{spec.input_names[i]} {tuple(inputs[i].shape)}" for i in sizes if sizes[i])
    return label, inputs, expected


def candidate_axes(model, inputs, dynamic: str, name: str, say) -> dict[int, list[int]]:
    """Input index -> dims to make dynamic. For "all": every dim except dim 1 of a floating
    input with 3+ dims (its channels), kept only if the model runs at another size there."""
    if dynamic == "none":
        return {i: [] for i in range(len(inputs))}
    axes = {i: [0] if t.dim() >= 1 else [] for i, t in enumerate(inputs)}
    if dynamic == "batch":
        return axes
    for index, tensor in enumerate(inputs):
        channel = 1 if tensor.is_floating_point() and tensor.dim() >= 3 else None
        if tensor.is_floating_point() and tensor.dim() == 2:
            channel = 1  # (N, features)
        for dim in range(1, tensor.dim()):
            if dim == channel:
                continue
            trial = resized(inputs, {index: {dim: grown(tensor.shape[dim])}})
            try:
                with quiet():  # a GraphModule prints its own traceback before raising
                    model(*trial)
            except Exception:  # noqa: BLE001 - the model fixes this size: keep it static
                say(f"{name}: input {index} dim {dim} stays static (the model needs size {tensor.shape[dim]})")
                continue
            axes[index].append(dim)
    return axes


class _ExporterFailed(Exception):
    """One exporter's reason, in one short line; turned into an ExportError by the caller."""


def _export_with(exporter: str, model, inputs, tmp: Path, spec: ExportSpec, name: str) -> str:
    """Run the chosen exporter; "auto" = TorchScript, dynamo when TorchScript is doubtful."""
    try:
        if exporter == "dynamo" or (exporter == "auto" and spec.opset > MAX_TORCHSCRIPT_OPSET):
            _export_dynamo(model, inputs, tmp, spec)
            _refuse_specialized(tmp, spec)
            return "dynamo"
        if exporter == "torchscript":
            _export_torchscript(model, inputs, tmp, spec, strict=False)
            return "torchscript"
    except _ExporterFailed as failure:
        raise ExportError(f"cannot export {name} to ONNX with {exporter}: {failure}") from None
    try:
        _export_torchscript(model, inputs, tmp, spec, strict=True)
        return "torchscript"
    except _ExporterFailed as torchscript_failure:
        try:
            _export_dynamo(model, inputs, tmp, spec)
            _refuse_specialized(tmp, spec)
        except _Specialized:
            # dynamo ran but fixed a dim asked to be dynamic (an RNN's batch, say). TorchScript's
            # warning may be harmless: take its trace, which parity then checks at other sizes.
            _export_torchscript(model, inputs, tmp, spec, strict=False)
            return "torchscript"
        except _ExporterFailed as dynamo_failure:
            raise ExportError(
                f"cannot export {name} to ONNX: torchscript: {torchscript_failure}; "
                f"dynamo: {dynamo_failure}"
            ) from None
        return "dynamo"


class _Specialized(_ExporterFailed):
    """dynamo exported, but with a static size where a dynamic dim was asked for."""


def _refuse_specialized(path: Path, spec: ExportSpec) -> None:
    import onnx

    graph_inputs = {i.name: i for i in onnx.load(str(path), load_external_data=False).graph.input}
    for index, dims in spec.axes.items():
        value = graph_inputs.get(spec.input_names[index])
        if value is None:
            continue
        shape = value.type.tensor_type.shape.dim
        fixed = [d for d in dims if d < len(shape) and shape[d].HasField("dim_value")]
        if fixed:
            raise _Specialized(f"dynamo fixed dim {fixed[0]} of {spec.input_names[index]} to "
                               f"{shape[fixed[0]].dim_value}; use --dynamic none for a fixed-size file")  # fmt: skip


def _export_torchscript(model, inputs, tmp: Path, spec: ExportSpec, *, strict: bool):
    dynamic_axes = {spec.input_names[i]: {d: spec.axis_label(i, d) for d in dims}
                    for i, dims in spec.axes.items() if dims}  # fmt: skip
    if any(0 in dims for dims in spec.axes.values()):
        for out_name, tensor in zip(spec.output_names, spec.expected):
            if tensor.dim() >= 1:
                dynamic_axes[out_name] = {0: BATCH_AXIS_NAME}
    with quiet() as caught:
        try:
            torch.onnx.export(
                model,
                inputs,
                str(tmp),
                dynamo=False,
                opset_version=spec.opset,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=dynamic_axes or None,
                do_constant_folding=True,
            )
        except Exception as error:  # noqa: BLE001 - any exporter failure becomes one line
            raise _ExporterFailed(first_line(error)) from None
    tracer_warning = getattr(torch.jit, "TracerWarning", ())
    tracer_warnings = [w for w in caught if issubclass(w.category, tracer_warning)]
    if strict and tracer_warnings:
        raise _ExporterFailed(f"trace may be input-specific: {first_line(tracer_warnings[0].message)}")


def _export_dynamo(model, inputs, tmp: Path, spec: ExportSpec):
    dynamic_shapes = None
    if any(spec.axes.values()):
        # AUTO: a dim the trace must fix is fixed instead of raising; ``_refuse_specialized``
        # then finds it in the file and the caller decides
        dynamic_shapes = tuple(
            {d: torch.export.Dim.AUTO for d in spec.axes[i]} or None for i in range(len(inputs))
        )
    with quiet():
        try:
            torch.onnx.export(
                model,
                inputs,
                str(tmp),
                dynamo=True,
                opset_version=spec.opset,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_shapes=dynamic_shapes,
                external_data=False,  # one self-contained file, so os.replace moves it all
                verbose=False,
            )
        except Exception as error:  # noqa: BLE001
            raise _ExporterFailed(deepest_reason(error)) from None


def signature_names(model: nn.Module, count: int) -> list[str]:
    """The forward signature's first ``count`` parameter names; ``input``/``input_<i>``
    when the signature does not say (``*args``)."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    plain = [p.name for p in parameters
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
    if len(plain) >= count:
        return plain[:count]
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def unique(names: list[str]) -> list[str]:
    """ONNX-friendly, distinct names (``a b`` -> ``a_b``; a repeat gets ``_2``)."""
    seen: dict[str, int] = {}
    result = []
    for raw in names:
        clean = re.sub(r"[^0-9A-Za-z_.:-]", "_", str(raw)) or "value"
        seen[clean] = seen.get(clean, 0) + 1
        result.append(clean if seen[clean] == 1 else f"{clean}_{seen[clean]}")
    return result


def as_inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        kinds = ", ".join(type(t).__name__ for t in inputs) or "nothing"
        raise ExportError(f"example_inputs must be tensors, got {kinds}")
    return inputs


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for export; every submodule's own flag is put back afterwards."""
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in flags.items():
            module.training = training


__all__ = ["DEFAULT_OPSET", "DYNAMIC", "EXPORTERS", "ExportReport", "check_opset", "export_onnx"]
