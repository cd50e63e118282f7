"""The test split's confusion matrix as a PNG (Pillow): one cell per (true, predicted)
class pair, darker for more examples, with its count; row labels are the true classes,
column labels the predicted ones."""
from __future__ import annotations

from pathlib import Path

CELL = 28            # pixels per cell
MARGIN = 40          # room for the labels


def write_confusion(matrix: list[list[int]], path: Path, names: list[str] | None = None) -> None:
    from PIL import Image, ImageDraw
    k = len(matrix)
    names = names or [str(i) for i in range(k)]
    size = MARGIN + k * CELL + 4
    img = Image.new("RGB", (size, size + 14), "white")
    draw = ImageDraw.Draw(img)
    draw.text((MARGIN, 2), "predicted ->", fill="black")
    draw.text((2, size), "rows: true class", fill="black")
    peak = max(1, max(max(row) for row in matrix))
    for i, row in enumerate(matrix):
        draw.text((4, MARGIN + i * CELL + CELL // 3), names[i][:5], fill="black")
        for j, count in enumerate(row):
            if i == 0:
                draw.text((MARGIN + j * CELL + 4, MARGIN - 14), names[j][:4], fill="black")
            shade = 255 - int(215 * count / peak)
            x0, y0 = MARGIN + j * CELL, MARGIN + i * CELL
            draw.rectangle((x0, y0, x0 + CELL - 1, y0 + CELL - 1), fill=(shade, shade, 255),
                           outline="#999999")
            draw.text((x0 + 3, y0 + CELL // 3), str(count),
                      fill="white" if shade < 128 else "black")
    img.save(path, format="PNG")
