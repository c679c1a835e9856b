"""Small renderables shared by the CLI."""

from __future__ import annotations

from torch import nn

_WIDTH_ATTRS = ("out_channels", "out_features", "embedding_dim")


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv/linear/norm module, by qualified name."""
    out = {}
    for name, m in model.named_modules():
        for attr in _WIDTH_ATTRS:
            value = getattr(m, attr, None)
            if isinstance(value, int):
                out[name] = value
                break
    return out


def widths_table(dense: nn.Module, result, max_rows: int = 40):
    """Per-layer widths before/after for layers that changed."""
    from rich.table import Table

    before, after = layer_widths(dense), layer_widths(result.model)
    t = Table(title="layer widths (changed layers)", title_justify="left")
    t.add_column("layer")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_column("kept", justify="right")
    changed = [(n, before[n], after[n]) for n in before if n in after and after[n] != before[n]]
    for name, b, a in changed[:max_rows]:
        t.add_row(name, str(b), str(a), f"{100 * a / b:.0f}%")
    if len(changed) > max_rows:
        t.add_row(f"... {len(changed) - max_rows} more", "", "", "")
    return t


__all__ = ["layer_widths", "widths_table"]
