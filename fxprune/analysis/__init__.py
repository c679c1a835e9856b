"""Channel analysis: the result types (``ChannelGraph``, ``ChannelGroup``, label arrays)
and the ``Builder`` state op rules write to. Which op couples which channels is not
known here: that is the op registry, ``fxprune.ops``, one layer up."""

from .builder import Builder, Dispatch, walk
from .graph import (
    META_LABELS,
    META_SIZE_OF,
    ChannelGraph,
    ChannelGroup,
    Labels,
    Space,
    UnhandledOp,
    iter_arrays,
    plain_labels,
    target_name,
)

__all__ = [
    "META_LABELS",
    "META_SIZE_OF",
    "Builder",
    "ChannelGraph",
    "ChannelGroup",
    "Dispatch",
    "Labels",
    "Space",
    "UnhandledOp",
    "iter_arrays",
    "plain_labels",
    "target_name",
    "walk",
]
