"""Capturing a model that ``torch.fx.symbolic_trace`` cannot trace whole, with TorchDynamo.

HuggingFace transformers 5 (BERT, GPT-2, LLaMA, ...) dropped ``transformers.utils.fx``;
their forwards take ``**kwargs`` through decorators and build attention masks with
Python branches on tensor sizes, which symbolic tracing cannot follow. TorchDynamo reads
the Python bytecode instead and specialises that control flow on the example inputs:
``torch._dynamo.export(model, aten_graph=False)`` returns ONE graph of torch-level calls
(``F.linear``, ``F.embedding``, ``F.layer_norm``, ``F.scaled_dot_product_attention``,
``torch.addmm``, ``view``/``split``/``transpose``, RMSNorm and RoPE math), which is what
fxprune's op registry reads. ``capture_graph`` turns that graph into a normal fxprune
GraphModule:

* **Original names.** Dynamo names a parameter ``L__self___transformer_h_0_ln_1_weight``;
  each ``get_attr`` is renamed to the qualified name the model itself uses
  (``transformer.h.0.ln_1.weight``, found by identity), so plans are keyed by the
  model's own names and ``apply_plan`` replays them on a fresh instance.
* **Modules back.** ``F.linear(x, m.weight, m.bias)``, ``F.embedding(ids, m.weight, ...)``
  and ``F.layer_norm(x, shape, m.weight, m.bias, eps)`` whose tensors are exactly those of
  an ``nn.Linear``/``nn.Embedding``/``nn.LayerNorm`` of the model with its own settings
  become ``call_module`` nodes of that module again, as symbolic tracing gives them.
* **Plain sizes.** ``aten.sym_size.int(x, d)`` becomes ``x.size(d)`` and
  ``torch.Size([...])`` a tuple, so size provenance flows as in a traced graph; dynamo's
  ``_log_api_usage_once`` calls are dropped.
* **Plain inputs and outputs.** The example inputs are the placeholders; keyword
  settings (``use_cache=False``, ``return_dict=False`` where ``forward`` takes them: no
  key/value cache among the outputs, a tuple instead of a ``ModelOutput``) are constants.

What dynamo specialises stays specialised in the slim model: a dim of size 1 in the
example inputs (the batch of ``(1, T)`` token ids) is a constant in the graph, so give a
batch of 2 or more; other sizes (batch, sequence length) stay symbolic where dynamo could
keep them so. The capture runs in eval mode (dropout is off in the graph).

When it runs: ``fxprune.trace.trace_model`` calls ``capture_instead`` when symbolic tracing
fails at the root of a model from ``CAPTURED_LIBRARIES`` (libraries written for dynamo);
other models are captured on request with ``capture_model``. This is the one module that
uses torch's private capture machinery (``torch._dynamo.export``, ``torch.utils._pytree``,
the exported graph's ``_out_spec``).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils import _pytree as pytree

from .errors import TraceError

# keyword settings a capture runs with, where ``forward`` takes them: inference without
# a key/value cache among the outputs, plain tuples instead of ModelOutput objects
CAPTURE_KEYWORDS: dict[str, Any] = {"use_cache": False, "return_dict": False}
META_CAPTURED = "fxprune_captured"  # GraphModule.meta key: "dynamo" when captured here
_TENSOR_ID = "fxprune_tensor_id"  # get_attr node.meta while converting: id() of its tensor
_KEPT_META = ("stack_trace", "nn_module_stack", _TENSOR_ID)


# libraries whose models are written for TorchDynamo (tested with torch.compile/export):
# when symbolic tracing fails at their root, ``trace_model`` captures them instead of
# pruning them part by part
CAPTURED_LIBRARIES = ("transformers",)


def prefers_capture(model: nn.Module) -> bool:
    """Whether ``model``'s class comes from one of ``CAPTURED_LIBRARIES``."""
    return type(model).__module__.partition(".")[0] in CAPTURED_LIBRARIES


def capture_instead(model: nn.Module, inputs: tuple, root_error: TraceError) -> fx.GraphModule:
    """``trace_model``'s fallback when symbolic tracing fails at the root: the capture of a
    model from ``CAPTURED_LIBRARIES``; else (a detector: pruned part by part instead), or
    when the capture fails too, ``root_error`` (with the capture's reason appended)."""
    if not prefers_capture(model):
        raise root_error
    try:
        return capture_graph(model, inputs)
    except TraceError as capture_error:
        raise type(root_error)(f"{root_error} {capture_error}") from capture_error


def capture_keywords(model: nn.Module) -> dict[str, Any]:
    """The entries of ``CAPTURE_KEYWORDS`` that ``model.forward`` accepts by name."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in CAPTURE_KEYWORDS.items() if k in parameters}


def capture_model(model: nn.Module, example_inputs: Any) -> fx.GraphModule:
    """A captured GraphModule owning a deep copy of ``model`` (the model is untouched), for
    models ``trace_model`` does not capture by itself: pass it to ``fxprune.prune`` like
    the model (a GraphModule is used as it is), and to ``apply_plan`` the capture of a fresh
    instance; plans are keyed by the model's own qualified names either way."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    return capture_graph(copy.deepcopy(model), tuple(example_inputs))


def capture_graph(model: nn.Module, inputs: tuple) -> fx.GraphModule:
    """One torch-level GraphModule of ``model`` called on ``inputs`` (see the module
    docstring); it shares ``model``'s modules and tensors (callers copy first)."""
    try:
        import torch._dynamo as dynamo
    except ImportError as exc:  # pragma: no cover - every supported torch has it
        raise TraceError(f"torch._dynamo is not available: {exc}") from exc
    keywords = capture_keywords(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            exported = dynamo.export(model, aten_graph=False)(*inputs, **keywords)
    except Exception as exc:  # dynamo raises many types; all mean "cannot capture"
        text = str(exc).strip().splitlines()
        raise TraceError(f"TorchDynamo could not capture {type(model).__name__} as one graph: "
                         f"{type(exc).__name__}: {text[0] if text else ''}") from exc
    finally:
        model.train(was_training)
    graph, attributes = _plain_graph(model, exported.graph_module, len(inputs))
    gm = fx.GraphModule(attributes, graph, type(model).__name__)
    gm.train(was_training)
    gm.meta[META_CAPTURED] = "dynamo"
    return gm


def _qualified_names(model: nn.Module) -> dict[int, str]:
    """Tensor identity -> its first qualified name in ``model`` (tied weights: the first)."""
    names: dict[int, str] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        names.setdefault(id(tensor), name)
    return names


def _weight_owners(model: nn.Module) -> dict[tuple[int, type], str]:
    """``(id(weight), module type)`` -> qualified name of the module owning that weight,
    for the module types whose functional form is turned back into a module call (a tied
    LM head and its embedding share one weight but differ in type)."""
    owners: dict[tuple[int, type], str] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if type(module) in _MODULE_TYPES and isinstance(weight, torch.Tensor):
            owners.setdefault((id(weight), type(module)), name)
    return owners


def _plain_graph(model: nn.Module, src: fx.GraphModule, num_inputs: int
                 ) -> tuple[fx.Graph, dict[str, Any]]:
    out_spec = getattr(src, "_out_spec", None)
    names = _qualified_names(model)
    owners = _weight_owners(model)
    attributes: dict[str, Any] = {}
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    placeholders = [n for n in src.graph.nodes if n.op == "placeholder"]
    input_names = _input_names(model, num_inputs)
    for i, node in enumerate(placeholders):
        if i < num_inputs:
            env[node] = graph.placeholder(input_names[i])
        elif node.users:
            raise TraceError(f"the captured graph reads keyword input '{node.name}'")

    def value(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n])

    for node in src.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "get_attr":
            tensor = _fetch(src, node.target)
            target = names.get(id(tensor))
            if target is None:  # a constant dynamo made (a lifted literal tensor)
                target = f"_captured_{node.target}"
            attributes[target] = tensor
            env[node] = graph.get_attr(target)
            env[node].meta[_TENSOR_ID] = id(tensor)
        elif node.op == "output":
            graph.output(_structured(value(node.args[0]), out_spec))
        elif node.op == "call_function" and node.target is torch._C._log_api_usage_once:
            continue
        elif node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
            env[node] = graph.call_method("size", value(node.args), {})
        elif node.op == "call_function" and node.target is torch.Size:
            env[node] = tuple(value(node.args[0]))
        else:
            module_call = _as_module_call(model, owners, graph, node, env, attributes)
            env[node] = module_call if module_call is not None else graph.node_copy(node, lambda n: env[n])
        if isinstance(env.get(node), fx.Node):  # dynamo's fake example values are not kept
            env[node].meta = {k: v for k, v in env[node].meta.items() if k in _KEPT_META}
    for node in reversed(graph.nodes):  # tensors now read through their module
        node.meta.pop(_TENSOR_ID, None)
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    graph.lint()
    _drop_unused_attributes(graph, attributes)
    return graph, attributes


def _structured(flat: Any, out_spec: Any) -> Any:
    """The flat outputs in the structure the model returned, when that structure is made
    of tuples, lists and dicts (which a GraphModule can return); else a flat tuple."""
    flat = list(flat) if isinstance(flat, (list, tuple)) else [flat]
    if out_spec is None:
        return tuple(flat)
    structured = pytree.tree_unflatten(flat, out_spec)
    plain = True

    def check(x: Any) -> Any:
        nonlocal plain
        plain = plain and (x is None or isinstance(x, (fx.Node, tuple, list, dict, int, float, bool)))
        return x

    pytree.tree_map(check, structured, is_leaf=lambda x: not isinstance(x, (tuple, list, dict)))
    return structured if plain and type(structured) in (tuple, list, dict, fx.Node) else tuple(flat)


def _input_names(model: nn.Module, count: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"input_{i}" for i in range(count)]


def _fetch(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _drop_unused_attributes(graph: fx.Graph, attributes: dict[str, Any]) -> None:
    used = {n.target for n in graph.nodes if n.op in ("get_attr", "call_module")}
    for key in [k for k in attributes if k not in used]:
        del attributes[key]


# -- functional calls back into the model's own modules --------------------------------------


def _as_module_call(model: nn.Module, owners: dict[tuple[int, type], str], graph: fx.Graph,
                    node: fx.Node, env: dict, attributes: dict[str, Any]) -> fx.Node | None:
    """A ``call_module`` node replacing ``node`` when it is exactly one of the model's
    ``nn.Linear``/``nn.Embedding``/``nn.LayerNorm`` applied to its input, else None."""
    if node.op != "call_function" or node.target not in _MODULE_FORMS:
        return None
    module_type, check = _MODULE_FORMS[node.target]
    weight = _arg(node, 1 if node.target is not F.layer_norm else 2, "weight")
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        return None
    qualname = owners.get((env[weight].meta[_TENSOR_ID], module_type))
    if qualname is None:
        return None
    module = model.get_submodule(qualname)
    if not check(node, module, env):
        return None
    attributes[qualname] = module
    x = env[node.args[0]] if isinstance(node.args[0], fx.Node) else node.args[0]
    return graph.call_module(qualname, (x,), {})


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _linear_matches(node: fx.Node, module: nn.Linear, env: dict) -> bool:
    return len(node.args) + len(node.kwargs) <= 3 and _bias_matches(_arg(node, 2, "bias"), module.bias, env)


def _embedding_matches(node: fx.Node, module: nn.Embedding, env: dict) -> bool:
    settings = [_arg(node, i, k, d) for i, (k, d) in enumerate(
        [("padding_idx", None), ("max_norm", None), ("norm_type", 2.0), ("scale_grad_by_freq", False),
         ("sparse", False)], start=2)]
    return settings == [module.padding_idx, module.max_norm, module.norm_type,
                        module.scale_grad_by_freq, module.sparse]


def _layer_norm_matches(node: fx.Node, module: nn.LayerNorm, env: dict) -> bool:
    shape = _arg(node, 1, "normalized_shape")
    eps = _arg(node, 4, "eps", 1e-5)
    return tuple(shape) == tuple(module.normalized_shape) and eps == module.eps and \
        _bias_matches(_arg(node, 3, "bias"), module.bias, env)


def _bias_matches(node_arg: Any, bias: torch.Tensor | None, env: dict) -> bool:
    if bias is None:
        return node_arg is None
    return isinstance(node_arg, fx.Node) and node_arg.op == "get_attr" and \
        env[node_arg].meta.get(_TENSOR_ID) == id(bias)


_MODULE_FORMS = {
    F.linear: (nn.Linear, _linear_matches),
    F.embedding: (nn.Embedding, _embedding_matches),
    F.layer_norm: (nn.LayerNorm, _layer_norm_matches),
}

_MODULE_TYPES = {module_type for module_type, _ in _MODULE_FORMS.values()}

__all__ = ["CAPTURED_LIBRARIES", "CAPTURE_KEYWORDS", "META_CAPTURED", "capture_graph", "capture_instead", "capture_keywords", "capture_model", "prefers_capture"]
