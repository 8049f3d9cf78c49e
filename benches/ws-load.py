#!/usr/bin/env python3
"""Load check for a running `nexus serve`: N WebSocket subscribers on one
running job plus N concurrent status requests (in waves, while the job runs).
Zero errors expected; every subscriber must see the job's final state.
Prints the p50/p95/p99 latency of the status reads.

usage: ws-load.py BASE_URL USER PASSWORD CSV_FILE [N]
"""
import asyncio
import json
import statistics
import sys
import time

import httpx
import websockets


async def main():
    base, user, password, csv = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 500
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        r = await http.post("/api/v2/auth/login", json={"username": user, "password": password})
        r.raise_for_status()
        token = r.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        with open(csv, "rb") as f:
            r = await http.post("/api/v2/jobs?model=customer", content=f.read(),
                                headers={**auth, "Content-Type": "text/csv", "X-Filename": "load-check.csv"})
        r.raise_for_status()
        job = r.json()["job_id"]
        print(f"job {job} queued; opening {n} subscribers")

        ws_url = base.replace("http", "ws", 1) + f"/api/v2/ws?access_token={token}"
        errors = []
        finals = 0
        progress_msgs = 0

        async def subscriber(i):
            nonlocal finals, progress_msgs
            try:
                async with websockets.connect(ws_url, max_queue=None, open_timeout=60) as ws:
                    await ws.send(json.dumps({"type": "subscribe", "job_id": job}))
                    while True:
                        m = json.loads(await asyncio.wait_for(ws.recv(), 300))
                        if m["type"] == "error":
                            errors.append(f"ws {i}: {m}")
                            return
                        if m["type"] == "progress":
                            progress_msgs += 1
                        if m["type"] == "job" and m["status"] in ("succeeded", "failed", "cancelled", "skipped"):
                            if m["status"] != "succeeded":
                                errors.append(f"ws {i}: job ended {m['status']}")
                            finals += 1
                            return
            except Exception as e:  # noqa: BLE001 - every failure counts
                errors.append(f"ws {i}: {e!r}")

        latencies = []
        done = asyncio.Event()

        async def status_reads():
            while not done.is_set():
                async def one():
                    t = time.perf_counter()
                    try:
                        r = await http.get(f"/api/v2/jobs/{job}", headers=auth)
                        if r.status_code != 200:
                            errors.append(f"status read: HTTP {r.status_code}")
                    except Exception as e:  # noqa: BLE001
                        errors.append(f"status read: {e!r}")
                    latencies.append((time.perf_counter() - t) * 1000)
                await asyncio.gather(*(one() for _ in range(n)))

        reader = asyncio.create_task(status_reads())
        started = time.perf_counter()
        await asyncio.gather(*(subscriber(i) for i in range(n)))
        done.set()
        await reader
        elapsed = time.perf_counter() - started
        r = await http.get(f"/api/v2/jobs/{job}", headers=auth)
        final = r.json()
        q = statistics.quantiles(latencies, n=100)
        print(f"job: {final['status']}, {final['rows_committed']} rows committed in {final['duration_ms']} ms "
              f"({final['rows_per_sec']:.0f} rows/s)")
        print(f"subscribers: {n}, saw the final state: {finals}, progress messages: {progress_msgs}")
        print(f"status reads: {len(latencies)} in waves of {n}, "
              f"p50 {q[49]:.1f} ms, p95 {q[94]:.1f} ms, p99 {q[98]:.1f} ms")
        print(f"errors: {len(errors)}")
        for e in errors[:10]:
            print("  " + e)
        print(f"elapsed: {elapsed:.1f} s")
        sys.exit(0 if not errors and finals == n and final["status"] == "succeeded" else 1)


asyncio.run(main())
