#!/usr/bin/env bash
# The GPU benchmark, one command on a fresh machine (at most ~8 min after the install):
#   here, once:   bash bench/gpu_wheels.sh            (writes .whl/, ignored by git)
#   on the GPU:   bash bench/gpu.sh                   (device run with carry [".whl"])
# Installs the carried wheels into /tmp/site, builds a full-size random-weight VoxCPM2
# (`voxtrio tiny-model --size full`), measures the floor (voxcpm's own
# generate_streaming, optimize=True, one stream: bench/scenarios/gpu_floor.py), then serves it
# batched with --compile off and --compile on (CUDA graphs per bucket) and runs closed
# loops at c = 1, 16, 64, 128. One table ($OUT/gpu.md, also printed): first audio
# p50/p95, per-request RTF p50/p95, audio s/s, GPU memory, the card's name.
# Also $OUT/gpu.json, floor.json, compile-{off,on}/batching.json, gpu.log.
# CPU rehearsal: WHEELS=none SIZE=tiny DEVICE=cpu CONCURRENCY=1,4 MAX_LEN=8 bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/voxtrio-gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=${PY:-python3}
CONCURRENCY=${CONCURRENCY:-1,16,64,128}
MAX_LEN=${MAX_LEN:-40}            # chunks per request: 6.4 s of audio
BUDGET_S=${BUDGET_S:-450}         # everything after the install, hard stop
MAX_BATCH=${MAX_BATCH:-128}
started=$(date +%s)
echo "== $(date -u) gpu.sh: concurrency=$CONCURRENCY max_len=$MAX_LEN"

WHEELS=${WHEELS:-.whl}            # WHEELS=none: use what is installed (CPU rehearsal)
if [ "$WHEELS" != none ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || { echo "FAILED: wheel install"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
"$PY" - <<'PY' || { echo "FAILED: imports (carry .whl from bench/gpu_wheels.sh)"; exit 1; }
import torch, trio, av  # noqa: F401
import voxtrio._app  # noqa: F401
from voxtrio.speech._voxcpm_import import import_voxcpm
import_voxcpm()  # voxcpm as the server imports it (its unused imports shimmed)
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv || true
started=$(date +%s)  # the budget counts from here: after the install

SIZE=${SIZE:-full}
DEVICE=${DEVICE:-cuda}
MODEL=.tiny/bench-voxcpm2-$SIZE
if [ ! -f "$MODEL/config.json" ]; then
  echo "== building a $SIZE VoxCPM2 (random weights) in $MODEL"
  timeout 240 "$PY" -m voxtrio tiny-model "$MODEL" --arch voxcpm2 --size "$SIZE" --stop never --force \
    || { echo "FAILED: checkpoint build"; exit 1; }
fi
echo "== checkpoint ready after $(( $(date +%s) - started )) s"

# Budget after the install: floor <= FLOOR_S, then the rest split between the two servers.
FLOOR_S=${FLOOR_S:-120}
echo "== floor: voxcpm generate_streaming, optimize=True, one stream"
timeout "$FLOOR_S" "$PY" -m bench gpu_floor --model "$MODEL" --device "$DEVICE" \
  --max-len "$MAX_LEN" --runs 5 --out "$OUT" || echo "floor: stopped (rc=$?)"
rc=0
for setting in off on; do
  left=$(( BUDGET_S - ($(date +%s) - started) ))
  [ "$setting" = off ] && left=$(( left / 2 ))
  [ "$left" -lt 60 ] && left=60
  echo "== server --compile $setting (at most ${left} s)"
  timeout "$left" "$PY" -m bench batching --model "$MODEL" --device "$DEVICE" --modes batched \
    --concurrency "$CONCURRENCY" --max-len "$MAX_LEN" --rounds 1 --max-batch "$MAX_BATCH" \
    --compile "$setting" --level-timeout 90 --out "$OUT/compile-$setting" || rc=$?
done
"$PY" - "$OUT" "$DEVICE" <<'PY' || true
import json, sys, pathlib
import torch
out, device = pathlib.Path(sys.argv[1]), sys.argv[2]
card = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{device} (rehearsal)"
rows = []
floor = out / "floor.json"
if floor.exists():
    f = json.loads(floor.read_text())
    rows.append({"run": "voxcpm generate_streaming (floor)", "c": 1, **f})
else:
    rows.append({"run": "voxcpm generate_streaming (floor)", "c": 1, "missing": True})
for setting in ("off", "on"):
    path = out / f"compile-{setting}" / "batching.json"
    if not path.exists():
        rows.append({"run": f"server --compile {setting}", "c": "-", "missing": True})
        continue
    for c, lv in json.loads(path.read_text())["modes"]["batched"]["levels"].items():
        rows.append({"run": f"server --compile {setting}", "c": int(c), **lv})
(out / "gpu.json").write_text(json.dumps({"card": card, "rows": rows}, indent=2))
def cell(row, key, sub=None):
    value = row.get(key)
    if sub is not None and isinstance(value, dict):
        value = value.get(sub)
    return "-" if value is None else str(value)
lines = [f"card: {card}", "",
         "| run | c | first audio p50 ms | p95 ms | RTF p50 | RTF p95 | audio s/s | errors | GPU MiB |",
         "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    if r.get("missing"):
        lines.append(f"| {r['run']} | {r['c']} | (did not finish: see gpu.log) | | | | | | |")
        continue
    lines.append(f"| {r['run']} | {r['c']} | {cell(r, 'ttfa_ms', 'p50')} | {cell(r, 'ttfa_ms', 'p95')} "
                 f"| {cell(r, 'rtf', 'p50')} | {cell(r, 'rtf', 'p95')} | {cell(r, 'audio_s_per_s')} "
                 f"| {cell(r, 'errors')} | {cell(r, 'gpu_memory_mib')} |")
(out / "gpu.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "== done rc=$rc after $(( $(date +%s) - started )) s"
exit $rc
