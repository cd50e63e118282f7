"""The notes' detection line on one `shapes` split: trains each detector example with
`dlc train` and prints a Markdown row per detector for benchmarks/RESULTS.md:
test mAP@0.5, mAP@[.5:.95], training seconds (final.json, proposals excluded: they are
computed once per image and cached), proposal seconds per image, and inference ms per image
(the network, decoding and NMS on the test split, batch 1).

    OMP_NUM_THREADS=1 nice python scripts/examples/detectors.py [--only yolo_v1 fast_rcnn]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DETECTORS = ["rcnn", "spp_net", "fast_rcnn", "faster_rcnn", "yolo_v1"]


def train(name: str, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "dlc.cli", "train", f"examples/{name}.dls", "--out",
                    str(out), "--overwrite", "--quiet"], check=True)
    return json.loads((out / "final.json").read_text())


def timings(name: str, out: Path, images: int = 50) -> tuple[float | None, float]:
    """(seconds of proposals per image or None, milliseconds of detection per image)."""
    from dlc.api import compile_spec
    from dlc.runtime.data import load
    from dlc.runtime.model import Model
    from dlc.runtime.proposals import compute
    spec = compile_spec(f"examples/{name}.dls", [])
    model = Model(spec, checkpoint=out / "checkpoint.safetensors")
    test = load(spec.config.data, spec.config.seed, Path("examples")).test.take(slice(0, images))
    proposal_s, x = None, test.x
    if spec.config.proposals is not None:
        import os
        os.environ["DLC_CACHE_DIR"] = str(out / "cache")          # time them uncached
        t = time.perf_counter()
        boxes = compute(spec.config.proposals, test.x)
        proposal_s = (time.perf_counter() - t) / images
        x = {model.input_names[0]: test.x, "proposals": boxes}
    model.detect(x if not isinstance(x, dict) else {k: v[:2] for k, v in x.items()}, batch=1)
    t = time.perf_counter()
    model.detect(x, batch=1)
    return proposal_s, (time.perf_counter() - t) / images * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=DETECTORS)
    ap.add_argument("--runs", default="runs/detectors")
    args = ap.parse_args()
    print("| detector | test mAP@0.5 | test mAP@[.5:.95] | training s | proposals s/image "
          "| inference ms/image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.only:
        out = Path(args.runs) / name
        final = train(name, out)
        prop, infer = timings(name, out)
        print(f"| {name} | {final['test_map50']:.3f} | {final['test_map']:.3f} | "
              f"{final['seconds']:.0f} | {'-' if prop is None else f'{prop:.3f}'} | "
              f"{infer:.1f} |", flush=True)


if __name__ == "__main__":
    main()
