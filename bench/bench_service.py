"""The service under load: status latency while a job runs, and nothing lost.

    .venv/bin/python bench/bench_service.py [--clients 50] [--submissions 20] [--seconds 20]

Starts `lmedit serve` (one worker) on loopback in a fresh home, then:

1. baseline: the same polling with no job running (measured in this run);
2. load: one job running (prune on the default model), ``--clients`` threads polling
   ``GET /v1/jobs/{id}`` every ``--interval`` seconds for ``--seconds`` while ``--submissions`` more
   jobs are submitted: p50/p99 latency of the status call, ratios to the baseline; then the same
   clients polling as fast as they can (the service's capacity; the clients share the CPUs);
3. nothing lost: every submitted job is listed, every job's events are numbered 1..n without a gap,
   and the queue holds exactly the submissions. All jobs are cancelled at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(url: str, headers: dict, seconds: float, clients: int, interval: float = 0.0) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    end = time.time() + seconds

    def client():
        mine = []
        if interval:  # clients start at random moments, as independent users do (not in lockstep)
            time.sleep(random.uniform(0, interval))
        with httpx.Client(headers=headers, timeout=30) as http:
            while time.time() < end:
                t = time.perf_counter()
                assert http.get(url).status_code == 200
                mine.append(time.perf_counter() - t)
                if interval:
                    time.sleep(interval)
        with lock:
            latencies.extend(mine[1:])  # the first request of a client also opens its connection

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def summary(name: str, lat: list[float], seconds: float) -> tuple[float, float]:
    q = statistics.quantiles(lat, n=100)
    p50, p99 = q[49] * 1000, q[98] * 1000
    print(f"{name:28s} {len(lat):7d} requests  {len(lat) / seconds:7.1f}/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")
    return p50, p99


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--submissions", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between one client's polls")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lmedit-bench-service-"))
    token = secrets.token_urlsafe(24)
    (home / "tokens").write_text(f"bench {token}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "editor", "serve", "--port", str(port), "--home", str(home / "h"),
                               "--tokens", str(home / "tokens"), "--max-queued", "1000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        print(f"# {time.strftime('%Y-%m-%d')} {os.cpu_count()} CPUs, {args.clients} polling clients, "
              f"{args.submissions} submissions, {args.seconds:.0f} s per phase")
        job = {"recipe": "prune", "set": {"baselines": []}}
        # Baseline: an idle service (a job submitted and cancelled at once, so there is one to poll).
        quiet = httpx.post(f"{url}/v1/jobs", json=job, headers=headers).json()["id"]
        httpx.delete(f"{url}/v1/jobs/{quiet}", headers=headers)
        while httpx.get(f"{url}/v1/jobs/{quiet}", headers=headers).json()["state"] != "cancelled":
            time.sleep(0.2)
        time.sleep(3)
        idle = poll(f"{url}/v1/jobs/{quiet}", headers, min(10.0, args.seconds), args.clients, args.interval)
        flood_idle = poll(f"{url}/v1/jobs/{quiet}", headers, min(10.0, args.seconds), args.clients)
        first = httpx.post(f"{url}/v1/jobs", json=job, headers=headers).json()["id"]
        while httpx.get(f"{url}/v1/jobs/{first}", headers=headers).json()["state"] != "running":
            time.sleep(0.2)
        time.sleep(5)  # the worker is loading the model and computing now
        submitted: list[str] = []

        def submit():
            for i in range(args.submissions):
                r = httpx.post(f"{url}/v1/jobs", json={**job, "set": {**job["set"], "seed": i + 1}}, headers=headers)
                assert r.status_code == 202, r.text
                submitted.append(r.json()["id"])
                time.sleep(args.seconds / (args.submissions + 1))

        sub = threading.Thread(target=submit)
        sub.start()
        loaded = poll(f"{url}/v1/jobs/{first}", headers, args.seconds, args.clients, args.interval)
        sub.join()
        flood = poll(f"{url}/v1/jobs/{first}", headers, min(10.0, args.seconds), args.clients)
        print(f"polling every {args.interval} s per client:")
        b50, b99 = summary("  idle service (baseline)", idle, min(10.0, args.seconds))
        l50, l99 = summary("  a job running + submits", loaded, args.seconds)
        print(f"  under load: p50 {l50 / b50:.2f}x, p99 {l99 / b99:.2f}x the baseline; "
              f"target p99 < 100 ms: {'met' if l99 < 100 else 'NOT met'}")
        print("polling as fast as possible (closed loop: capacity; latency = clients / throughput):")
        f50, f99 = summary("  idle service (baseline)", flood_idle, min(10.0, args.seconds))
        g50, g99 = summary("  a job running", flood, min(10.0, args.seconds))
        print(f"  under load: p50 {g50 / f50:.2f}x, p99 {g99 / f99:.2f}x the baseline")
        listed = {j["id"]: j for j in httpx.get(f"{url}/v1/jobs", headers=headers).json()["jobs"]}
        lost = [j for j in [quiet, first, *submitted] if j not in listed]
        gaps = []
        for j in listed:
            seqs = [e["seq"] for e in httpx.get(f"{url}/v1/jobs/{j}/events", params={"follow": "false"},
                                                headers=headers).json()["events"]]
            if seqs != list(range(1, len(seqs) + 1)):
                gaps.append(j)
        queued = sum(1 for j in listed.values() if j["state"] == "queued")
        print(f"jobs submitted {2 + len(submitted)}, listed {len(listed)}, lost {len(lost)}, event gaps {len(gaps)}, "
              f"queued {queued} (expected {len(submitted)})")
        for j in listed:
            httpx.delete(f"{url}/v1/jobs/{j}", headers=headers)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
