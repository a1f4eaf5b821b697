#!/usr/bin/env bash
# One lent-H200 session's measuring runs, each a separate `run` call (10 minutes at most each), made right after
# the wheel staging runs that ../shared/gpu/bundle-wheels.sh prints (this script assumes /tmp/site holds them).
#   bash benchmarks/h200_session.sh tests    # tests/gpu (fidelity of every CUDA path) + benchmarks/engines.py --mode gpu
#   bash benchmarks/h200_session.sh video    # benchmarks/video.py (NVDEC, PyAV, ultralytics, yoloray infer on clips)
#   bash benchmarks/h200_session.sh e2e      # benchmarks/e2e.py: no-flag (auto profile) row beside the hand-set rows
#   bash benchmarks/h200_session.sh serve    # benchmarks/serve_load.py
# Results go under $OUT (the run tool brings them back).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/platform PATH=/tmp/site/bin:$PATH YOLO_OFFLINE=true YOLO_CONFIG_DIR=/tmp/ultralytics \
  PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git log -1 --format='commit %h %s' 2>/dev/null | cut -c1-120
case "${1:-}" in
  tests)
    timeout 90 python3 benchmarks/nvdec_smoke.py >"$OUT/nvdec_smoke.txt" 2>&1; tail -30 "$OUT/nvdec_smoke.txt"
    timeout 300 python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu >"$OUT/tests_gpu.txt" 2>&1; tail -40 "$OUT/tests_gpu.txt"
    timeout 200 python3 benchmarks/engines.py --mode gpu --out "$OUT" >"$OUT/engines.txt" 2>&1; tail -40 "$OUT/engines.txt"
    ;;
  video)
    timeout 580 python3 benchmarks/video.py --work /tmp/vbench --out "$OUT" "${@:2}" >"$OUT/video.txt" 2>&1; tail -60 "$OUT/video.txt"
    ;;
  e2e)
    timeout 580 python3 benchmarks/e2e.py --out "$OUT" "${@:2}" >"$OUT/e2e.txt" 2>&1; tail -60 "$OUT/e2e.txt"
    ;;
  serve)
    timeout 580 python3 benchmarks/serve_load.py --out "$OUT/serve_load.json" "${@:2}" >"$OUT/serve.txt" 2>&1; tail -60 "$OUT/serve.txt"
    ;;
  *) echo "usage: $0 tests|video|e2e|serve [args]"; exit 2 ;;
esac
