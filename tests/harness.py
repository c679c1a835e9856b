"""One harness for graph tests: analyse, prune, slim, and check the structural invariant
(channels really removed, input untouched) and the numerical one (slim == masked dense)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import torch

import fxprune
from fxprune.verify import verify_equivalence

LLAMA_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "llama7b_meta.py"


def load_llama():
    """The benchmarks' LLaMA module (``build_model`` on meta, ``build_tiny``), from its file."""
    spec = importlib.util.spec_from_file_location("llama7b_meta", LLAMA_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def group_members(graph) -> list[set[str]]:
    """Each prunable group's member spaces, in group order."""
    return [set(g.members) for g in graph.groups if g.prunable]


def prune_and_check(model, x, ratio=0.5, min_ratio=0.1, scorer="random", exact=True, **kw):
    model = model.eval()
    inputs = x if isinstance(x, tuple) else (x,)
    before = copy.deepcopy(model.state_dict())
    result = fxprune.prune(model, inputs, ratio=ratio, min_ratio=min_ratio, scorer=scorer, **kw)
    # the caller's model is untouched
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the slim model is new and smaller
    assert result.model is not model
    if ratio > 0:
        assert result.params_after < result.params_before, "nothing was pruned"
    rep = verify_equivalence(result.graph, result.keep, result.model, inputs)
    assert rep.exact == exact, rep.detail
    assert rep.passed, rep.detail
    # a different batch size runs and keeps the output shape
    big = tuple(torch.cat([t, t]) for t in inputs)
    with torch.no_grad():
        dense_out = model(*big)
        slim_out = result.model(*big)
    if isinstance(dense_out, torch.Tensor):
        assert slim_out.shape == dense_out.shape
    return result


def kept_counts(result) -> dict[int, int]:
    return {g.id: int(result.keep[g.classes].sum()) for g in result.graph.groups}


def module_widths(model) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


__all__ = ["group_members", "kept_counts", "load_llama", "module_widths", "np", "prune_and_check"]
