#!/usr/bin/env bash
# Train examples/training/optimizers.dls once per optimizer (reference backend, niced) into
# runs/optimizers/NAME and print a Markdown table of test accuracy, best validation accuracy
# and final training loss.  Usage: scripts/examples/optimizers.sh [OUT_DIR] [extra dlc args]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/optimizers}
shift || true
DLC=${DLC:-.venv/bin/dlc}
SPEC=examples/training/optimizers.dls
OPTIMIZERS=(
  "sgd=sgd(lr=0.05)"
  "sgd_momentum=sgd(lr=0.05, momentum=0.9)"
  "sgd_nesterov=sgd(lr=0.05, momentum=0.9, nesterov=true)"
  "momentum=momentum(lr=0.05, beta=0.9)"
  "nag=nag(lr=0.05, beta=0.9)"
  "adagrad=adagrad(lr=0.05)"
  "adadelta=adadelta(lr=1.0)"
  "rmsprop=rmsprop(lr=1e-3)"
  "adam=adam(lr=1e-3)"
  "adam_amsgrad=adam(lr=1e-3, amsgrad=true)"
  "adamw=adamw(lr=1e-3, weight_decay=0.01)"
)
for item in "${OPTIMIZERS[@]}"; do
  name=${item%%=*}; opt=${item#*=}
  nice -n 19 "$DLC" train "$SPEC" --backend reference --quiet --out "$OUT/$name" \
    --set "train.optimizer=$opt" "$@" >/dev/null
done
python3 - "$OUT" "${OPTIMIZERS[@]}" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| optimizer | test acc | best val acc (epoch) | final train loss | seconds |")
print("| --- | --- | --- | --- | --- |")
for item in sys.argv[2:]:
    name, opt = item.split("=", 1)
    final = json.loads((out / name / "final.json").read_text())
    rows = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_acc"])
    print(f"| `{opt}` | {final['test_acc']:.4f} | {best['val_acc']:.4f} ({best['epoch']}) | "
          f"{rows[-1]['train_loss']:.4f} | {final['seconds']:.1f} |")
PY
