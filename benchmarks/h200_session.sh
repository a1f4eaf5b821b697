#!/usr/bin/env bash
# One lent-H200 session's measuring runs, each a separate `run` call (10 minutes at most each), made right after
# the wheel staging runs that ../shared/gpu/bundle-wheels.sh prints (this script assumes /tmp/site holds them).
#   bash benchmarks/h200_session.sh tests [ARGS]  # tests/gpu but video (every CUDA path) + engines.py --mode gpu ARGS
#   TESTS=FILES TESTS_K=EXPR bash benchmarks/h200_session.sh engines-tests ARGS  # engines.py --mode gpu ARGS, then
#                                                   # pytest FILES (default: the ORT GPU tests) -k EXPR
#   bash benchmarks/h200_session.sh video    # benchmarks/video.py (NVDEC, PyAV, ultralytics, yoloray infer on clips)
#   bash benchmarks/h200_session.sh video-watch ARGS  # video.py ARGS, with host_watch.py's NVDEC/SM/CPU figures per row
#   TESTS_K=EXPR LIMIT=S TESTS_TIMEOUT=S bash benchmarks/h200_session.sh video-check ARGS  # test_video_gpu.py -k EXPR,
#                                                   # then video-watch
#   bash benchmarks/h200_session.sh video-best ARGS   # the last video-watch's best (5) config (by steady rate), ARGS
#   bash benchmarks/h200_session.sh nvdec-probe ARGS  # benchmarks/nvdec_probe.py ARGS (150 s at most; data in /tmp/vbench)
#   bash benchmarks/h200_session.sh video-tests ARGS  # tests/gpu/test_video_gpu.py + video.py ARGS + the best (5) at 300k
#   bash benchmarks/h200_session.sh e2e      # benchmarks/e2e.py: no-flag (auto profile) row beside the hand-set rows
#   bash benchmarks/h200_session.sh e2e-observe ARGS  # e2e.py ARGS, then observe_gpu.py --with-ray
#   bash benchmarks/h200_session.sh serve    # benchmarks/serve_load.py
#   bash benchmarks/h200_session.sh serve-tuned [ARGS]  # issue 18's tuned serve_load.py command, shortened levels
#   bash benchmarks/h200_session.sh serve-step [ARGS]   # the tuned engine's autoscaling step alone (first request
#                                                      # of a new replica against its own steady p50), ~2-3 minutes
#   bash benchmarks/h200_session.sh compile-probe [ARGS] # compile_start_probe.py (warm torch-compile start phases)
#   bash benchmarks/h200_session.sh tune-sweep [ARGS]   # issue 16: the default `yoloray tune` sweep (both levels),
#                                                      # timed, into /tmp/tvg/sweep (kept while the machine is warm)
#   bash benchmarks/h200_session.sh tune-grid K [ARGS]  # then, same machine: the grid (every engine point, the layout
#                                                      # level for the best K), compared with that sweep
# Results go under $OUT (the run tool brings them back).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/platform PATH=/tmp/site/bin:$PATH YOLO_OFFLINE=true YOLO_CONFIG_DIR=/tmp/ultralytics \
  PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
# The lent machine's image sets PYTHONDONTWRITEBYTECODE=1 and its torch has no cached bytecode for torch._dynamo
# and _inductor (seen 2026-12-02), so every process compiled ~1,400 module sources again (4.7 s of a warm
# torch-compile start). A pip install writes the bytecode; this writes it once per machine under /tmp instead
# (every run from the seventh session on; earlier figures were measured without it).
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
unset PYTHONDONTWRITEBYTECODE
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git log -1 --format='commit %h %s' 2>/dev/null | cut -c1-120
# whether this Python finds or writes cached bytecode for torch (a warm torch-compile start imports ~1,400 modules
# of torch._dynamo/_inductor; without cached bytecode each process compiles their sources again)
python3 -c "import os, sys, torch; d = os.path.dirname(torch.__file__); c = d + '/_dynamo/__pycache__'
print('bytecode: dont_write', sys.dont_write_bytecode, 'prefix', sys.pycache_prefix, 'torch at', d, 'writable',
      os.access(d, os.W_OK), '_dynamo cached', len(os.listdir(c)) if os.path.isdir(c) else 0)"
case "${1:-}" in
  tests)
    timeout 240 python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu --ignore tests/gpu/test_video_gpu.py \
      >"$OUT/tests_gpu.txt" 2>&1; tail -25 "$OUT/tests_gpu.txt"
    timeout $((575 - SECONDS)) python3 benchmarks/engines.py --mode gpu --out "$OUT" "${@:2}" >"$OUT/engines.txt" 2>&1
    tail -25 "$OUT/engines.txt"
    ;;
  engines-tests)  # engines.py --mode gpu ARGS first, then the ORT GPU tests in the time left (pytest -k $TESTS_K)
    timeout 420 python3 benchmarks/engines.py --mode gpu --out "$OUT" "${@:2}" >"$OUT/engines.txt" 2>&1
    grep -v "^{" "$OUT/engines.txt" | grep -v "W:onnxruntime" | tail -40
    timeout $((580 - SECONDS)) python3 -m pytest -q -p no:cacheprovider -rfE ${TESTS:-tests/gpu/test_onnxruntime_gpu.py} \
      -k "${TESTS_K:-}" >"$OUT/tests_gpu.txt" 2>&1; tail -8 "$OUT/tests_gpu.txt"
    ;;
  video)
    timeout 580 python3 benchmarks/video.py --work /tmp/vbench --out "$OUT" "${@:2}" >"$OUT/video.txt" 2>&1; tail -60 "$OUT/video.txt"
    ;;
  video-watch)  # video.py ARGS with benchmarks/host_watch.py recording (NVDEC/SM utilization, host CPUs, busiest
                # processes), summarized per row; video.json also kept in /tmp/vbench for a later `video-best`
    python3 benchmarks/host_watch.py record --log "$OUT/watch.jsonl" & watcher=$!
    timeout "${VIDEO_TIMEOUT:-560}" python3 benchmarks/video.py --work /tmp/vbench --out "$OUT" "${@:2}" >"$OUT/video.txt" 2>&1
    kill $watcher; pkill -f "nvidia-smi dmon"; grep -E "^data|^\||^best|x$" "$OUT/video.txt" | tail -30
    python3 benchmarks/host_watch.py summary --log "$OUT/watch.jsonl" --rows "$OUT/video.json" | tee "$OUT/watch.txt"
    cp "$OUT/video.json" /tmp/vbench/last_video.json
    ;;
  video-check)  # tests/gpu/test_video_gpu.py -k "$TESTS_K" (TESTS_TIMEOUT s, default 100), then video-watch ARGS in
                # the time left of LIMIT seconds (default 580)
    timeout "${TESTS_TIMEOUT:-100}" python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu/test_video_gpu.py -k "${TESTS_K:-}" \
      >"$OUT/tests_video.txt" 2>&1; tail -6 "$OUT/tests_video.txt"
    VIDEO_TIMEOUT=$((${LIMIT:-580} - SECONDS - 15)) exec bash "$0" video-watch "${@:2}"
    ;;
  video-best)  # the best (5) configuration of the last `video-watch` on this machine, again: video.py ARGS
               # --configs BEST (ARGS set the job size, data and peer rows), recorded as video-watch does
    best=$(python3 -c "import json; r=[x for x in json.load(open('/tmp/vbench/last_video.json')) if x['row'].startswith('(5)') and 'frames_per_s' in x]; print(max(r, key=lambda x: x.get('steady_frames_per_s') or 0)['config'].split()[0])")
    echo "best (5) of the last video-watch, by its steady rate: $best"
    exec bash "$0" video-watch "${@:2}" --configs "$best"
    ;;
  nvdec-probe)
    timeout "${PROBE_TIMEOUT:-150}" python3 benchmarks/nvdec_probe.py --work /tmp/vbench --out "$OUT" "${@:2}" \
      >"$OUT/nvdec_probe.txt" 2>&1; grep -E "^data|^\|" "$OUT/nvdec_probe.txt" | tail -20
    ;;
  video-tests)  # tests/gpu/test_video_gpu.py, then the given video.py rows, then the best (5) config at 300,000 frames
    timeout 170 python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu/test_video_gpu.py >"$OUT/tests_video.txt" 2>&1
    tail -15 "$OUT/tests_video.txt"
    timeout 330 python3 benchmarks/video.py --work /tmp/vbench --out "$OUT" "${@:2}" >"$OUT/video.txt" 2>&1
    grep -E "^\||^actor start|^best|x$" "$OUT/video.txt" | tail -30
    best=$(python3 -c "import json; r=[x for x in json.load(open('$OUT/video.json')) if x['row'].startswith('(5)') and 'frames_per_s' in x]; print(max(r, key=lambda x: x['frames_per_s'])['config'].split()[0] if r else '')")
    if [ -n "$best" ] && [ "$SECONDS" -lt 420 ]; then
      timeout $((570 - SECONDS)) python3 benchmarks/video.py --work /tmp/vbench --out "$OUT/long" --unique 1920 --files 16 \
        --frames 300000 --codecs h264 --skip nvdec,pyav,predict,docs,stages --configs "$best" >"$OUT/long.txt" 2>&1
      grep -E "^\||^actor start" "$OUT/long.txt" | tail -5
    fi
    ;;
  e2e)
    timeout 580 python3 benchmarks/e2e.py --out "$OUT" "${@:2}" >"$OUT/e2e.txt" 2>&1; tail -60 "$OUT/e2e.txt"
    ;;
  e2e-observe)  # benchmarks/e2e.py ARGS, then benchmarks/observe_gpu.py (trace, memory budget, the Ray metric)
    timeout 400 python3 benchmarks/e2e.py --out "$OUT" "${@:2}" >"$OUT/e2e.txt" 2>&1; grep -E "^\|" "$OUT/e2e.txt" | tail -12
    timeout $((575 - SECONDS)) python3 benchmarks/observe_gpu.py --out "$OUT/observe" --frames 512 --batch 64 --with-ray \
      >"$OUT/observe.txt" 2>&1; tail -25 "$OUT/observe.txt"
    ;;
  serve)
    timeout 580 python3 benchmarks/serve_load.py --out "$OUT/serve_load.json" "${@:2}" >"$OUT/serve.txt" 2>&1; tail -60 "$OUT/serve.txt"
    ;;
  serve-tuned)  # issue 18's tuned command (benchmarks/README.md) with levels short enough for one 10-minute call
    timeout 580 python3 benchmarks/serve_load.py --random-weights yolov8s.yaml --duration 6 \
      --set engine.precision=fp16 --set engine.imgsz=384x640 --set engine.batch_size=32 --set max_batch_size=32 \
      --set engine.decode=gpu --set engine.cuda_graph=true --set max_queued_images=4096 \
      --option ray_actor_options.num_cpus=4 --option max_ongoing_requests=512 --option max_queued_requests=2048 \
      --concurrency 1,32,128,256 --docs-concurrency 16 --layouts 1x1,2x0.5 --layout-concurrency 256 \
      --step-gpus 0.5 --step-low 8 --step-high 128 --step-s 40 --client-procs 6 --out "$OUT/serve_load.json" "${@:2}" \
      >"$OUT/serve.txt" 2>&1; tail -60 "$OUT/serve.txt"
    ;;
  serve-step)  # the autoscaling step of serve-tuned alone
    timeout 400 python3 benchmarks/serve_load.py --random-weights yolov8s.yaml --systems none --step-ingress haproxy \
      --set engine.precision=fp16 --set engine.imgsz=384x640 --set engine.batch_size=32 --set max_batch_size=32 \
      --set engine.decode=gpu --set engine.cuda_graph=true --set max_queued_images=4096 \
      --option ray_actor_options.num_cpus=4 --option max_ongoing_requests=512 --option max_queued_requests=2048 \
      --step-gpus 0.5 --step-low 8 --step-high 128 --step-s 40 --client-procs 6 --out "$OUT/serve_load.json" "${@:2}" \
      >"$OUT/serve.txt" 2>&1; tail -15 "$OUT/serve.txt"
    ;;
  compile-probe)
    timeout 500 python3 benchmarks/compile_start_probe.py --work /tmp/csp "${@:2}" >"$OUT/probe.txt" 2>&1
    cat "$OUT/probe.txt"; cp /tmp/csp/aotc-new.profile.txt "$OUT/" 2>/dev/null; head -45 /tmp/csp/aotc-new.profile.txt 2>/dev/null
    ;;
  tune-sweep)
    timeout 585 python3 benchmarks/tune_vs_grid.py --gpus 1 --skip-grid --out /tmp/tvg/s "${@:2}" >"$OUT/tune_sweep.txt" 2>&1
    tail -25 "$OUT/tune_sweep.txt"; cp /tmp/tvg/s/tune_vs_grid.json "$OUT/" 2>/dev/null
    ;;
  tune-grid)
    timeout 585 python3 benchmarks/tune_vs_grid.py --gpus 1 --skip-sweep --sweep-json /tmp/tvg/s/tune_vs_grid.json \
      --grid-layout-top "$2" --out "/tmp/tvg/g$2" "${@:3}" >"$OUT/tune_grid.txt" 2>&1
    tail -25 "$OUT/tune_grid.txt"; cp "/tmp/tvg/g$2/tune_vs_grid.json" "$OUT/" 2>/dev/null
    ;;
  *) echo "usage: $0 tests|engines-tests|video|video-watch|video-check|video-best|nvdec-probe|video-tests|e2e|e2e-observe|serve|serve-tuned|serve-step|compile-probe|tune-sweep|tune-grid [args]"; exit 2 ;;
esac
