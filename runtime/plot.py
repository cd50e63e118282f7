"""Training curves with matplotlib: one run's own (curves.png/.svg in its run directory)
and several runs overlaid (`dlc plot RUN_DIR...`), to compare optimizers, regularisers or
the members of an ensemble.

Panels: loss per epoch (train solid, validation dashed), accuracy per epoch (only when a
run classifies: a regression run draws none) and the learning rate. A run's best epoch
is marked on its validation (else training) loss with a dot and a dotted vertical line.
The loss and learning-rate axes turn logarithmic when their values span more than a
factor of ten.

The figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend
state), SVG text kept as text.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..spec.diagnostics import UserError

FORMATS = ("png", "svg")
_TAGS = ("fold", "member")            # an ensemble's records say which model they belong to
_LOG_SPAN = 10.0                      # a positive axis spanning more than this goes log


@dataclass
class Curves:
    """One run's epoch records (metrics.jsonl rows) and the epoch to mark."""
    label: str
    records: list[dict]
    best_epoch: int | None = None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["epoch"], r[key]) for r in self.records if r.get(key) is not None]
        return [e for e, _ in pts], [v for _, v in pts]

    def marked_epoch(self) -> int | None:
        """The best epoch as the run reported it, else the one of lowest validation loss."""
        if self.best_epoch is not None:
            return self.best_epoch
        for key in ("val_loss", "train_loss"):
            epochs, values = self.series(key)
            if values:
                return epochs[values.index(min(values))]
        return None


def figure(runs: list[Curves]):
    """A matplotlib Figure of the runs' curves, overlaid; one colour per run."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.ticker import MaxNLocator
    panels = [("loss (solid: train, dashed: validation)", _draw_loss)]
    if any(run.series("train_acc")[1] or run.series("val_acc")[1] for run in runs):
        panels.append(("accuracy (solid: train, dashed: validation)", _draw_accuracy))
    panels.append(("learning rate", _draw_lr))
    fig = Figure(figsize=(5.2 * len(panels), 4.2))
    fig.subplots_adjust(left=0.07 * 3 / len(panels), right=0.98, bottom=0.12, top=0.92,
                        wspace=0.25)                   # fixed: a layout engine costs seconds
    FigureCanvasAgg(fig)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (title, draw) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        for run, colour in zip(runs, colours):
            draw(ax, run, colour)
    fig.axes[0].legend(fontsize="small")          # one entry per run, in its colour
    return fig


def _draw_pair(ax, run: Curves, colour: str, what: str) -> list[float]:
    """train_<what> solid (labelled with the run) and val_<what> dashed; their values."""
    values = []
    for split, style in (("train", "-"), ("val", "--")):
        epochs, v = run.series(f"{split}_{what}")
        if v:
            ax.plot(epochs, v, style, color=colour, label=run.label if not values else None)
            values += v
    return values


def _draw_loss(ax, run: Curves, colour: str) -> None:
    values = _draw_pair(ax, run, colour, "loss")
    best = run.marked_epoch()
    if best is not None:
        key = "val_loss" if run.series("val_loss")[1] else "train_loss"
        at = dict(zip(*run.series(key)))
        if best in at:
            ax.plot([best], [at[best]], "o", color=colour)
            ax.axvline(best, color=colour, linestyle=":", alpha=0.6)
    _log_if_wide(ax, values)


def _draw_accuracy(ax, run: Curves, colour: str) -> None:
    _draw_pair(ax, run, colour, "acc")


def _draw_lr(ax, run: Curves, colour: str) -> None:
    epochs, v = run.series("lr")
    if v:
        ax.plot(epochs, v, "-", color=colour)
        _log_if_wide(ax, [y for line in ax.lines for y in line.get_ydata()])


def _log_if_wide(ax, values: list[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) > _LOG_SPAN * min(positive):
        ax.set_yscale("log")


def save(fig, path: Path) -> list[Path]:
    """Write the figure: to `path` itself when it ends in .png, .svg or .pdf, else to
    path.png and path.svg. Returns the files written."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    targets = [path] if suffix in (*FORMATS, "pdf") else \
        [path.with_name(f"{path.name}.{fmt}") for fmt in FORMATS]
    import matplotlib
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dlc"}):
        for target in targets:
            meta = {"Date": None} if target.suffix in (".svg", ".pdf") else {}
            try:
                fig.savefig(target, dpi=110, metadata=meta)
            except OSError as e:
                raise UserError(f"cannot write {target}: {e.strerror}") from None
    return targets


def write_curves(records: list[dict], stem: Path, best_epoch: int | None = None) -> list[Path]:
    """A run's own curves: stem.png and stem.svg."""
    return save(figure([Curves(Path(stem).parent.name or "run", records, best_epoch)]), stem)


def read_run(run_dir: Path) -> list[Curves]:
    """The curves of a run directory: one per run, or one per fold/member of an ensemble
    (whose metrics.jsonl rows say which), labelled by the directory's name."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{run_dir} is not a run directory: it has no metrics.jsonl",
                        hint="give the folder `dlc train --out` wrote")
    try:
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise UserError(f"{metrics} is not JSON lines ({e})") from None
    if not rows:
        raise UserError(f"{metrics} holds no epochs yet")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        tag = next((f" {t} {r[t]}" for t in _TAGS if t in r), "")
        groups.setdefault(f"{run_dir.name}{tag}", []).append(r)
    best = _best_epoch(run_dir) if len(groups) == 1 else None
    return [Curves(label, recs, best) for label, recs in groups.items()]


def _best_epoch(run_dir: Path) -> int | None:
    """final.json's best epoch when the run stopped early (its weights are that epoch's)."""
    try:
        final = json.loads((run_dir / "final.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return final.get("best_epoch") if final.get("stopped") == "early_stopping" else None


def plot_runs(run_dirs: list[Path], out: Path) -> list[Path]:
    """`dlc plot`: the curves of every run directory in one figure."""
    runs = [c for d in run_dirs for c in read_run(Path(d))]
    return save(figure(runs), out)
