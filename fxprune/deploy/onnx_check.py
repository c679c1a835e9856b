"""Checking an ONNX export against PyTorch: the checker, onnxruntime parity, other sizes.

``flat_outputs`` runs the model and names its tensors (dict keys become names);
``parity`` runs the file in onnxruntime on several input cases and compares each output
with PyTorch (``|ort - torch| <= atol + rtol * |torch|``); ``resized`` makes the example
inputs at another batch size or another size along any dim, so a dynamic axis is proven
by running it, not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from fxprune.errors import ExportError

from .quiet import first_line
from .runtime import CPU, open_session


def flat_outputs(model, inputs, name: str) -> list[tuple[str, torch.Tensor]]:
    """The model's output tensors in order, each with a name: ``output`` for a lone tensor,
    the key for a dict entry, ``output_<i>`` for a tuple item (nested: joined by ``_``)."""
    try:
        outputs = model(*inputs)
    except Exception as error:  # noqa: BLE001
        raise ExportError(f"{name} fails on its example inputs: {first_line(error)}") from None
    flat: list[tuple[str, torch.Tensor]] = []

    def visit(value, where: str, label: str) -> None:
        if isinstance(value, torch.Tensor):
            flat.append((label, value))
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                visit(item, f"{where}[{i}]", f"{label}_{i}")
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{where}[{key!r}]", str(key) if label == "output" else f"{label}_{key}")
        else:
            raise ExportError(
                f"{name} returns {type(value).__name__} at {where}: ONNX export needs "
                "tensors (or tuples/lists/dicts of tensors) as outputs"
            )

    visit(outputs, "output", "output")
    if not flat:
        raise ExportError(f"{name} returns no tensor: nothing to export")
    return flat


def check_file(path: Path, name: str) -> int:
    """Run ``onnx.checker``; return the default-domain opset actually written."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
        model_proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001
        raise ExportError(f"ONNX checker rejected the export of {name}: {first_line(error)}") from None
    return max(
        (entry.version for entry in model_proto.opset_import if entry.domain in ("", "ai.onnx")),
        default=0,
    )


def parity(
    path: Path,
    cases: Sequence[tuple[str, tuple[torch.Tensor, ...], list[torch.Tensor]]],
    input_names: list[str],
    output_names: list[str],
    *,
    rtol: float,
    atol: float,
    name: str,
) -> tuple[float, float]:
    """Compare onnxruntime with PyTorch on each ``(label, inputs, expected)`` case.

    Returns (max abs diff, max rel diff); raises one ``ExportError`` line on a mismatch.
    """
    import numpy as np

    try:
        session = open_session(path, [CPU])
    except Exception as error:  # noqa: BLE001
        raise ExportError(f"onnxruntime cannot load the export of {name}: {first_line(error)}") from None
    max_abs = max_rel = 0.0
    for label, case_inputs, case_expected in cases:
        feed = {n: t.detach().cpu().numpy() for n, t in zip(input_names, case_inputs)}
        try:
            got = session.run(None, feed)
        except Exception as error:  # noqa: BLE001
            raise ExportError(
                f"onnxruntime failed to run the export of {name} at {label}: {first_line(error)}"
            ) from None
        for out_name, ort_out, torch_out in zip(output_names, got, case_expected):
            reference = torch_out.detach().cpu().numpy()
            ort_out = np.asarray(ort_out)
            if ort_out.shape != reference.shape:
                raise ExportError(
                    f"export of {name} is wrong at {label}: {out_name} has shape "
                    f"{ort_out.shape} in onnxruntime, {reference.shape} in torch"
                )
            if reference.size == 0:
                continue
            if reference.dtype.kind in "fc":
                reference64 = reference.astype(np.float64)
                diff = np.abs(ort_out.astype(np.float64) - reference64)
                diff = np.where(np.isnan(diff), 0.0, diff)  # NaN == NaN counts as equal
                max_abs = max(max_abs, float(diff.max()))
                max_rel = max(max_rel, float((diff / np.maximum(np.abs(reference64), atol)).max()))
                close = np.allclose(ort_out, reference, rtol=rtol, atol=atol, equal_nan=True)
            else:
                close = np.array_equal(ort_out, reference)
                if not close:
                    max_abs = max(max_abs, float(np.abs(ort_out.astype(np.float64) - reference).max()))
                    max_rel = float("inf")
            if not close:
                raise ExportError(
                    f"ONNX parity failed for {name} at {label} on {out_name}: "
                    f"max abs diff {max_abs:.3g}, max rel diff {max_rel:.3g} "
                    f"(rtol={rtol:g}, atol={atol:g})"
                )
    return max_abs, max_rel


def other_batch(batch: int) -> int:
    """A batch size different from ``batch``: 3, or 2 if the example batch is 3."""
    return 2 if batch == 3 else 3


def grown(size: int) -> int:
    """Another size for a non-batch dim: ``size`` plus its largest power-of-two divisor, so
    a size divisible by 32 (a net with five stride-2 stages) stays divisible by 32."""
    return size + (size & -size) if size > 0 else 1


def resized(
    inputs: tuple[torch.Tensor, ...], sizes: dict[int, dict[int, int]]
) -> tuple[torch.Tensor, ...]:
    """The example inputs with ``sizes[input index][dim] = new size``: floats drawn with
    the example's mean and std, integers from the example's value range."""
    generator = torch.Generator().manual_seed(0)
    result = []
    for index, tensor in enumerate(inputs):
        changes = sizes.get(index, {})
        if not changes:
            result.append(tensor)
            continue
        shape = [changes.get(d, s) for d, s in enumerate(tensor.shape)]
        if tensor.is_floating_point():
            std = float(tensor.float().std()) if tensor.numel() > 1 else 1.0
            fresh = torch.randn(shape, generator=generator) * (std or 1.0) + float(tensor.float().mean())
            result.append(fresh.to(dtype=tensor.dtype, device=tensor.device))
        elif tensor.dtype == torch.bool:
            result.append(torch.randint(0, 2, shape, generator=generator).bool())
        else:  # ids, masks: stay inside the values the example uses
            low, high = (int(tensor.min()), int(tensor.max())) if tensor.numel() else (0, 1)
            fresh = torch.randint(low, high + 1, shape, generator=generator)
            result.append(fresh.to(dtype=tensor.dtype, device=tensor.device))
    return tuple(result)


__all__ = ["check_file", "flat_outputs", "grown", "other_batch", "parity", "resized"]
