"""Training curves as a self-contained SVG (no plotting library needed)."""
from __future__ import annotations

from pathlib import Path

_COLORS = {"train_loss": "#1f77b4", "val_loss": "#ff7f0e", "val_acc": "#2ca02c",
           "train_acc": "#9467bd"}


def _panel(records, keys, x0, y0, w, h, title, fixed=None) -> list[str]:
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
           f'<text x="{x0 + w / 2}" y="{y0 - 8}" text-anchor="middle" font-size="14">{title}</text>']
    series = {k: [(r["epoch"], r[k]) for r in records if r.get(k) is not None] for k in keys}
    values = [v for s in series.values() for _, v in s]
    if not values:
        return out
    lo, hi = fixed if fixed else (min(values), max(values))
    if hi - lo < 1e-12:
        hi = lo + 1.0
    n = max(r["epoch"] for r in records)
    first = min(r["epoch"] for r in records)
    span = max(1, n - first)

    def px(e, v):
        return x0 + (e - first) / span * w, y0 + h - (v - lo) / (hi - lo) * h

    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        _, y = px(first, v)
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{v:.3g}</text>')
    out.append(f'<text x="{x0}" y="{y0 + h + 16}" font-size="11">epoch {first}</text>')
    out.append(f'<text x="{x0 + w}" y="{y0 + h + 16}" text-anchor="end" font-size="11">{n}</text>')
    for i, (k, pts) in enumerate(series.items()):
        if not pts:
            continue
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (px(e, v) for e, v in pts))
        out.append(f'<polyline fill="none" stroke="{_COLORS.get(k, "#000")}" stroke-width="2" '
                   f'points="{path}"/>')
        out.append(f'<text x="{x0 + w / 2 + (i - 0.5) * 110:.0f}" y="{y0 + h + 34}" '
                   f'text-anchor="middle" font-size="12" '
                   f'fill="{_COLORS.get(k, "#000")}">&#9472; {k}</text>')
    return out


def write_curves(records: list[dict], path: Path) -> None:
    """Loss (left) and accuracy (right) per epoch."""
    w, h = 900, 380
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif">', f'<rect width="{w}" height="{h}" fill="white"/>']
    parts += _panel(records, ["train_loss", "val_loss"], 70, 40, 340, 270, "loss")
    parts += _panel(records, ["train_acc", "val_acc"], 520, 40, 340, 270, "accuracy")
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")
