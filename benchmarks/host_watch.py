"""What the machine is busy with while a benchmark runs: the GPU's SM and video-decoder (NVDEC) utilization and
the host's CPUs, sampled every `--every` seconds into a JSON-lines log, then summarized over each benchmark row's
time window. Used by `h200_session.sh video-watch` to say which side limits a video job (NVDEC engines busy,
SMs busy, the CPUs, or one Python process near 100% of one core: its GIL).

    python benchmarks/host_watch.py record --log $OUT/watch.jsonl &     # until killed
    python benchmarks/host_watch.py summary --log $OUT/watch.jsonl --rows $OUT/video.json

Rows come from a benchmark's JSON (a list of dicts); a row with `t_start`/`t_end` (epoch seconds) gets the means
of the samples inside its window. Reads /proc and `nvidia-smi dmon` (no other dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_total() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _processes() -> dict[int, tuple[int, str, int]]:
    """pid -> (utime + stime jiffies, short command, threads)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        out[int(d.name)] = (int(rest[11]) + int(rest[12]), (cmd or stat.split()[1])[:80], int(rest[17]))
    return out


def record(log: Path, every: float) -> None:
    try:
        dmon = subprocess.Popen(["nvidia-smi", "dmon", "-s", "u", "-d", str(max(1, int(every)))],
                                stdout=subprocess.PIPE, text=True, bufsize=1)
    except OSError:  # no NVIDIA driver here: host figures only
        dmon = None
    gpu: dict = {}
    cols: list[str] = []

    def read_dmon():
        nonlocal cols
        for line in dmon.stdout:
            if line.startswith("#"):
                if "gpu" in line and not cols:
                    cols = line[1:].split()
                continue
            vals = line.split()
            if cols and len(vals) == len(cols) and vals[0] == "0":
                gpu.update({c: (None if v == "-" else float(v)) for c, v in zip(cols[1:], vals[1:])})

    if dmon is not None:
        threading.Thread(target=read_dmon, daemon=True).start()
    busy0, total0 = _cpu_total()
    procs0 = _processes()
    with log.open("a") as f:
        while True:
            time.sleep(every)
            busy, total = _cpu_total()
            procs = _processes()
            top = sorted(((p[0] - procs0.get(pid, (p[0],))[0], pid, p[1], p[2]) for pid, p in procs.items()),
                         reverse=True)[:5]
            scale = 100.0 / (every * TICK)
            f.write(json.dumps({"t": time.time(), "cpu_busy_pct": round(100 * (busy - busy0) / max(1, total - total0), 1),
                                "gpu": dict(gpu), "top": [{"pid": pid, "cpu_pct": round(d * scale), "cmd": cmd,
                                                           "threads": th} for d, pid, cmd, th in top]}) + "\n")
            f.flush()
            busy0, total0, procs0 = busy, total, procs


def summary(log: Path, rows: Path) -> None:
    samples = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    for r in json.loads(rows.read_text()):
        if "t_start" not in r:
            continue
        inside = [s for s in samples if r["t_start"] <= s["t"] <= r["t_end"]]
        if not inside:
            continue

        def mean(values):
            values = [v for v in values if v is not None]
            return round(sum(values) / len(values), 1) if values else None

        sm, dec = mean(s["gpu"].get("sm") for s in inside), mean(s["gpu"].get("dec") for s in inside)
        cpu = mean(s["cpu_busy_pct"] for s in inside)
        busiest: dict[str, list[float]] = {}
        for s in inside:
            for p in s["top"][:3]:
                busiest.setdefault(p["cmd"][:60], []).append(p["cpu_pct"])
        top = sorted(((sum(v) / len(inside), k) for k, v in busiest.items()), reverse=True)[:3]
        print(f"{r['row']}: {len(inside)} samples; GPU sm {sm}% dec {dec}%; host CPUs busy {cpu}%; busiest "
              + "; ".join(f"{pct:.0f}% {cmd}" for pct, cmd in top))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["record", "summary"])
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--rows", type=Path, help="summary: a benchmark's JSON rows with t_start/t_end")
    p.add_argument("--every", type=float, default=2.0)
    a = p.parse_args()
    if a.what == "record":
        record(a.log, a.every)
    else:
        summary(a.log, a.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
