#!/usr/bin/env bash
# The paper path on one GPU in <= 8 minutes: a reduced study (one micro size; DPO and ORPO; static and dynamic
# thresholds at 0.5) with every cell loading through `load` on cuda in bf16 -- pretrain, pairs, align, calibrate,
# dense/static/dynamic eval, report -- then each cell's peak GPU memory beside `study plan`'s estimate for it.
# No test needs it; run it as is where a GPU is lent:
#     bash benchmarks/gpu_smoke.sh             # needs torch with CUDA
#     bash benchmarks/gpu_smoke.sh --dry-run   # anywhere: validates the same config and prints its plan
set -euo pipefail
cd "$(dirname "$0")/.."
SA=${SPARSEALIGN:-.venv/bin/sparsealign}
PY=${PYTHON:-.venv/bin/python}
CONFIG=tests/e2e/fixtures/reduced_study.yaml
SETS=(--name gpu-smoke --set load.device=cuda --set load.dtype=bfloat16 --set "sparsity.modes=[static,dynamic]"
      --set executor.workers=1)
export SPARSEALIGN_DATA_DIR=${SPARSEALIGN_DATA_DIR:-../shared/data} HF_HUB_OFFLINE=1

if [ "${1:-}" = "--dry-run" ]; then
  "$SA" study --config "$CONFIG" "${SETS[@]}" --dry-run
  "$SA" study --config "$CONFIG" "${SETS[@]}" plan
  exit 0
fi

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_smoke: no CUDA device (use --dry-run)')"
WORK=$(mktemp -d)
export SPARSEALIGN_RUNS_DIR="$WORK/runs" SPARSEALIGN_CACHE_DIR="$WORK/cache"
start=$(date +%s)
timeout 480 "$SA" study --config "$CONFIG" "${SETS[@]}" --json > "$WORK/summary.json"
"$SA" study --config "$CONFIG" "${SETS[@]}" plan --json > "$WORK/plan.json"
echo "study finished in $(( $(date +%s) - start )) s; run dir $WORK/runs/gpu-smoke"
"$PY" - "$WORK" <<'PY'
import json, sqlite3, sys
from pathlib import Path

work = Path(sys.argv[1])
summary = json.loads((work / "summary.json").read_text())
planned = {row["cell"]: row["memory_gib"] for row in json.loads((work / "plan.json").read_text())["cells"]}
ledger = sqlite3.connect(work / "runs" / "gpu-smoke" / "ledger.sqlite")
print(f"cells done {summary['done']}, failed {summary['failed']}")
print(f"{'cell':58s} {'peak GiB':>9s} {'plan GiB':>9s}")
for stage, cell, metrics in ledger.execute("select stage, cell, metrics from cells where stage like 'study.%'"):
    peak = json.loads(metrics).get("peak_gpu_gib")
    cell_id = f"{stage.removeprefix('study.')}:{cell}"
    print(f"{cell_id:58s} {peak if peak is None else round(peak, 4)!s:>9s} {planned.get(cell_id)!s:>9s}")
sys.exit(1 if summary["failed"] else 0)
PY
