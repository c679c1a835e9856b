"""The defaults shared by the command line and the Python API (one place, documented).

Pruning: the setting of the structured-Synflow paper (Lee & Yim): prune 85% of the
prunable channels, ranked globally by the data-free Synflow score, while every layer
keeps at least 15% of its channels. ``fxprune prune MODEL`` and ``fxprune.prune(model, x)``
therefore do the same thing. (The API used L1 magnitude at 0.5 before: pass
``ratio=0.5, scorer="l1"`` for that.)
"""

from __future__ import annotations

RATIO = 0.85  # fraction of all prunable channels removed (global ranking)
MIN_RATIO = 0.15  # every channel group keeps at least this fraction
SCORER = "synflow"  # data-free, scores at initialisation

OPSET = 17  # ONNX opset of `fxprune export` (the oldest one the exporters support well)
PROFILE_BATCH_SIZES = "1,8,32"  # `fxprune profile --batch`
PROFILE_MIN_SECONDS = 1.0  # time each model and batch size at least this long

__all__ = ["MIN_RATIO", "OPSET", "PROFILE_BATCH_SIZES", "PROFILE_MIN_SECONDS", "RATIO", "SCORER"]
