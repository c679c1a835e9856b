"""``PrunePlan``: the public, JSON-serialisable record of what a pruning kept.

Format (version 1)::

    {
      "version": 1,
      "modules": {"layer1.0.conv1": {"out_channels": [...], "in_channels": [...]},
                  "layer1.0.bn1": {"num_features": [...]}, "fc": {"in_features": [...]}},
      "parameters": {"layer_scale": {"dim": 0, "keep": [...]}},
      "groups": [{"id": 0, "size": 16, "kept": 3, "members": [...], "frozen": null}],
      "settings": {"ratio": 0.85, "min_ratio": 0.15, "scorer": "synflow", ...},
      "summary": {"params_before": ..., "params_after": ..., "macs_before": ..., ...}
    }

Module keys are qualified names in the ORIGINAL model (``named_modules()``); indices
are kept indices in the original index space, listed only for dimensions that lost
something. A ``get_attr`` tensor cut along several dims is a list of such objects.
``apply_plan`` re-applies a plan to a fresh instance of the same architecture.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .analysis import ChannelGraph
from .errors import PlanError
from .io import atomic_write_text, read_json
from .surgery import kept_indices

PLAN_VERSION = 1


@dataclass
class PrunePlan:
    modules: dict[str, dict[str, list[int]]]
    parameters: dict[str, Any] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        """A deep copy: editing it never changes the plan."""
        return copy.deepcopy({
            "version": self.version,
            "modules": self.modules,
            "parameters": self.parameters,
            "groups": self.groups,
            "settings": self.settings,
            "summary": self.summary,
        })

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrunePlan:
        if not isinstance(d, dict) or not isinstance(d.get("modules"), dict):
            raise PlanError("not a pruning plan: a top-level 'modules' object is required")
        if d.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise PlanError(f"plan version {d.get('version')} is not supported (expected {PLAN_VERSION})")
        return cls(
            modules=d["modules"],
            parameters=d.get("parameters", {}),
            groups=d.get("groups", []),
            settings=d.get("settings", {}),
            summary=d.get("summary", {}),
        )

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc.msg} at line {exc.lineno}") from exc

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrunePlan:
        return cls.from_dict(read_json(path, "plan file"))


def make_plan(graph: ChannelGraph, keep: np.ndarray, settings: dict[str, Any],
              summary: dict[str, Any] | None = None) -> PrunePlan:
    modules: dict[str, dict[str, list[int]]] = {}
    parameters: dict[str, Any] = {}
    for key, idx in kept_indices(graph, keep).items():
        space = graph.spaces[key]
        if space.kind == "module":
            modules.setdefault(space.owner, {})[space.attr] = idx.tolist()
        else:
            entry = {"dim": space.dim, "keep": idx.tolist()}
            prev = parameters.get(space.owner)
            if prev is None:
                parameters[space.owner] = entry
            else:
                parameters[space.owner] = (prev if isinstance(prev, list) else [prev]) + [entry]
    groups = [
        {
            "id": g.id,
            "size": g.size,
            "kept": int(keep[g.classes].sum()),
            "members": g.members,
            "frozen": g.frozen_reason if not g.prunable else None,
            "pinned": g.frozen_classes,
        }
        for g in graph.groups
    ]
    return PrunePlan(modules, parameters, groups, dict(settings), dict(summary or {}))


def keep_from_plan(graph: ChannelGraph, plan: PrunePlan) -> np.ndarray:
    """Recover the class keep mask of ``graph`` from a plan, checking it is consistent."""
    keep = np.ones(graph.num_classes, dtype=bool)
    listed: dict[str, list[int]] = {}
    for owner, attrs in plan.modules.items():
        if not isinstance(attrs, dict):
            raise PlanError(f"plan entry for module '{owner}' must be an object")
        for attr, idx in attrs.items():
            listed[f"{owner}.{attr}" if owner else attr] = idx
    for owner, entries in plan.parameters.items():
        for entry in entries if isinstance(entries, list) else [entries]:
            listed[f"{owner}#{entry['dim']}"] = entry["keep"]
    for key, idx in listed.items():
        space = graph.spaces.get(key)
        if space is None:
            raise PlanError(f"plan names '{key}', which this model has no prunable dimension for")
        idx = np.asarray(idx, dtype=np.int64)
        if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= len(space.atoms))):
            raise PlanError(f"plan indices for '{key}' are out of range (size {len(space.atoms)})")
        mask = np.zeros(len(space.atoms), dtype=bool)
        mask[idx] = True
        keep[graph.atom_class[space.atoms[~mask]]] = False
    for key, idx in listed.items():
        space = graph.spaces[key]
        got = np.flatnonzero(keep[graph.atom_class[space.atoms]])
        if not np.array_equal(got, np.sort(np.asarray(idx, dtype=np.int64))):
            raise PlanError(
                f"plan is inconsistent at '{key}': coupled dimensions keep different channels"
            )
    return keep


__all__ = ["PLAN_VERSION", "PrunePlan", "atomic_write_text", "keep_from_plan", "make_plan"]
