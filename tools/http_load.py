#!/usr/bin/env python3
"""Benchmark: does serving the web page slow the frame loop?

Runs `reidcam run` on the synthetic scene (moving people, default model, motion detector, no
gallery file) several times, alternating runs with no client and runs with N clients that each
ask for /api/v1/status and /api/v1/frame.jpg five times a second (issue 21's load). Each run's
per-frame time comes from the daemon's own --summary-json. Runs alternate so drift on a shared
machine falls on both sides; the ratio reported is median(loaded) / median(unloaded).

    python3 tools/http_load.py --binary target/release/reidcam [--pairs 4] [--clients 20]

Standard library only. Exit status 0 whatever the ratio: this measures, it does not judge.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

PATHS = ("/api/v1/status", "/api/v1/frame.jpg")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def one_run(args, workdir, clients):
    config = os.path.join(workdir, "load.toml")
    summary = os.path.join(workdir, "summary.json")
    with open(config, "w") as f:
        f.write(
            '[detector]\nkind = "motion"\n[gallery]\npath = ""\n'
            f'[http]\nenabled = true\nlisten = "127.0.0.1:{args.port}"\n'
        )
    cmd = [
        args.binary, "run", "--config", config, "--source", args.source,
        "--max-frames", str(args.frames), "--summary-json", summary, "--events", "/dev/null",
    ]
    with open(os.path.join(workdir, "daemon.log"), "w") as log:
        daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, cwd=args.repo)
    stop = threading.Event()
    served = {p: 0 for p in PATHS}
    failed = [0]

    def client():
        while not stop.is_set():
            began = time.monotonic()
            for path in PATHS:
                try:
                    url = f"http://127.0.0.1:{args.port}{path}"
                    urllib.request.urlopen(url, timeout=5).read()
                    served[path] += 1
                except Exception:
                    if daemon.poll() is None:  # not the end of the run closing the socket
                        failed[0] += 1
            stop.wait(max(0.0, 0.2 - (time.monotonic() - began)))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    time.sleep(1.5)  # the model loaded and the server listening before the clients start
    for t in threads:
        t.start()
    rc = daemon.wait()
    stop.set()
    for t in threads:
        t.join()
    if rc != 0:
        sys.exit(f"reidcam run exited {rc}; see {workdir}/daemon.log")
    with open(summary) as f:
        s = json.load(f)
    return s["per_frame_ms"]["total"], s["frames"], served, failed[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--binary", default="target/release/reidcam")
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--pairs", type=int, default=4, help="unloaded+loaded run pairs")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--frames", type=int, default=4000)
    ap.add_argument("--source", default="synthetic:640x360")
    ap.add_argument("--port", type=int, default=8471)
    args = ap.parse_args()
    args.binary = os.path.abspath(args.binary)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {args.clients} clients × (status + "
          f"frame.jpg) at 5 Hz; {args.frames} frames of {args.source} per run", flush=True)
    times = {0: [], args.clients: []}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.pairs):
            for clients in (0, args.clients):
                ms, frames, served, failed = one_run(args, workdir, clients)
                times[clients].append(ms)
                print(f"{clients:3d} clients: {ms:.3f} ms/frame over {frames} frames; served "
                      f"status {served[PATHS[0]]}, frame.jpg {served[PATHS[1]]}, "
                      f"failed {failed}", flush=True)
    base = statistics.median(times[0])
    loaded = statistics.median(times[args.clients])
    print(f"median per frame: {base:.3f} ms without clients, {loaded:.3f} ms with "
          f"{args.clients}: ratio {loaded / base:.3f}")


if __name__ == "__main__":
    main()
