#!/usr/bin/env bash
# The GPU benchmark of continuous batching, one command on a fresh machine (~6 min):
#   here, once:   bash bench/gpu_wheels.sh            (writes .whl/, ignored by git)
#   on the GPU:   bash bench/gpu.sh                   (device run with carry [".whl"])
# Installs the carried wheels into /tmp/site, builds a full-size random-weight VoxCPM2
# (`voxtrio tiny-model --size full`), serves it batched on cuda (eager, no CUDA graphs)
# and runs closed loops at c = 1, 16, 64, 128: first audio p50/p95, per-request RTF,
# aggregate audio s/s, GPU memory. Writes $OUT/gpu.json, $OUT/batching.json, $OUT/gpu.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/voxtrio-gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=${PY:-python3}
CONCURRENCY=${CONCURRENCY:-1,16,64,128}
MAX_LEN=${MAX_LEN:-40}            # chunks per request: 6.4 s of audio
BUDGET_S=${BUDGET_S:-420}         # everything after the install, hard stop
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

SIZE=${SIZE:-full}
DEVICE=${DEVICE:-cuda}
MODEL=.tiny/bench-voxcpm2-$SIZE
if [ ! -f "$MODEL/config.json" ]; then
  echo "== building a $SIZE VoxCPM2 (random weights) in $MODEL"
  timeout 240 "$PY" -m voxtrio tiny-model "$MODEL" --arch voxcpm2 --size "$SIZE" --stop never --force \
    || { echo "FAILED: checkpoint build"; exit 1; }
fi
echo "== checkpoint ready after $(( $(date +%s) - started )) s"

left=$(( BUDGET_S - ($(date +%s) - started) ))
[ "$left" -lt 120 ] && left=120
timeout "$left" "$PY" -m bench batching --model "$MODEL" --device "$DEVICE" --modes batched \
  --concurrency "$CONCURRENCY" --max-len "$MAX_LEN" --rounds 1 --max-batch 128 \
  --level-timeout 120 --out "$OUT"
rc=$?
"$PY" - "$OUT" <<'PY' || true
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
path = out / "batching.json"
if not path.exists():
    print("no batching.json (the run stopped early; see gpu.log)")
    raise SystemExit(0)
result = json.loads(path.read_text())
rows = []
for mode, data in result["modes"].items():
    for c, lv in data["levels"].items():
        rows.append({"mode": mode, "c": int(c), "ttfa_p50_ms": lv["ttfa_ms"].get("p50"),
                     "ttfa_p95_ms": lv["ttfa_ms"].get("p95"), "rtf_p50": lv["rtf"]["p50"],
                     "rtf_p95": lv["rtf"]["p95"], "audio_s_per_s": lv["audio_s_per_s"],
                     "errors": lv["errors"], "gpu_memory_mib": lv["gpu_memory_mib"]})
(out / "gpu.json").write_text(json.dumps({"levels": rows, "source": result}, indent=2))
print(f"{'c':>4} {'ttfa p50':>9} {'ttfa p95':>9} {'rtf p50':>8} {'rtf p95':>8} {'audio s/s':>10} {'err':>4} {'GPU MiB':>8}")
for r in rows:
    print(f"{r['c']:>4} {r['ttfa_p50_ms']!s:>9} {r['ttfa_p95_ms']!s:>9} {r['rtf_p50']!s:>8} "
          f"{r['rtf_p95']!s:>8} {r['audio_s_per_s']!s:>10} {r['errors']:>4} {r['gpu_memory_mib']!s:>8}")
PY
echo "== done rc=$rc after $(( $(date +%s) - started )) s"
exit $rc
