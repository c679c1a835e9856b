"""Rotary position tables: ``torch.outer`` and ``torch.arange``.

LLaMA-style rotary embeddings build their tables in forward::

    positions = torch.arange(seq)                  # (T,)    tokens: never channels
    freqs = torch.outer(positions, self.inv_freq)  # (T, Dh/2)
    emb = torch.cat((freqs, freqs), dim=-1)        # (T, Dh)
    q = q * emb.cos() + rotate_half(q) * emb.sin()

``outer`` keeps the labels of both factors, so the table's last dim carries
``inv_freq``'s labels (a buffer: a member of the head-dim class, never a producer);
``cat``, ``cos``/``sin`` and the broadcasting multiply (``layout``, ``elementwise``) then
put frequency ``j`` in the class of head dims ``j`` and ``j + Dh/2``, the pair
``rotate_half`` already keeps together. Surgery slices ``inv_freq`` with that class and
every table computed from it in the slim graph has the slim width; ``rotate_half``'s
computed split point becomes the kept half (``shapes.resolve_slice``).

With ``heads="whole"`` the head dims are plain, so the table's frequencies meet a plain
dim and stay whole (``inv_freq`` is frozen), while whole heads are still cut.
"""

from __future__ import annotations

import torch

from ..analysis import plain_labels
from .common import numel, out_shape
from .registry import register_function, register_method


def _outer_macs(node):
    return numel(node)


@register_function(torch.outer, torch.ger, macs=_outer_macs)
@register_method("outer", "ger", macs=_outer_macs)
def _outer(b, node):
    """``a[i] * b[j]``: dim 0 is ``a``'s, dim 1 is ``b``'s; nothing is summed."""
    left, right = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("vec2")
    ll, rl, shape = b.labels(left), b.labels(right), out_shape(node)
    if ll is None or rl is None or shape is None or len(ll) != 1 or len(rl) != 1:
        return b.unhandled_op(node, "outer of non-vectors")
    return [ll[0], rl[0]]



@register_function(torch.arange)
def _arange(b, node):
    """A range of positions (or any index vector): a new tensor with no channels. A size
    read from a channel dim that sizes it freezes that dim (``guard_size_uses``)."""
    return plain_labels(out_shape(node))
