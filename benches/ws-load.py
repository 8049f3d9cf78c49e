#!/usr/bin/env python3
"""Load check for a running `nexus serve`: N WebSocket subscribers on one
running job plus N concurrent connections reading the job's status (wrk,
for a window while the job runs). Zero errors expected; every subscriber
must see the job's final state. Prints the p50/p95/p99 of the status reads.

usage: ws-load.py BASE_URL USER PASSWORD CSV_FILE [N] [READ_SECONDS]
"""
import asyncio
import json
import sys
import time

import httpx
import websockets

WRK_REPORT = __file__.rsplit("/", 1)[0] + "/wrk-percentiles.lua"


async def main():
    base, user, password, csv = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 500
    read_seconds = int(sys.argv[6]) if len(sys.argv) > 6 else 5
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
        subscribed = 0
        all_subscribed = asyncio.Event()

        async def subscriber(i):
            nonlocal finals, progress_msgs, subscribed
            try:
                async with websockets.connect(ws_url, max_queue=None, open_timeout=60) as ws:
                    await ws.send(json.dumps({"type": "subscribe", "job_id": job}))
                    subscribed += 1
                    if subscribed == n:
                        all_subscribed.set()
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

        reads = {}

        async def status_reads():
            try:
                await asyncio.wait_for(all_subscribed.wait(), 120)
            except asyncio.TimeoutError:
                errors.append("not every subscriber subscribed within 120 s")
                return
            r = await http.get(f"/api/v2/jobs/{job}", headers=auth)
            reads["status_at_start"] = r.json()["status"]
            proc = await asyncio.create_subprocess_exec(
                "wrk", "-t2", f"-c{n}", f"-d{read_seconds}s", "--timeout", "10s",
                "-H", f"Authorization: Bearer {token}", "-s", WRK_REPORT,
                f"{base}/api/v2/jobs/{job}",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await proc.communicate()
            line = next((l for l in out.decode().splitlines() if l.startswith("wrk-summary")), None)
            if line is None:
                errors.append("wrk gave no summary: " + out.decode()[-500:])
                return
            reads.update(kv.split("=") for kv in line.split()[1:])
            r = await http.get(f"/api/v2/jobs/{job}", headers=auth)
            reads["status_at_end"] = r.json()["status"]
            if int(reads["errors"]) or int(reads["non2xx"]):
                errors.append(f"status reads: {reads['errors']} socket errors, {reads['non2xx']} non-2xx")

        reader = asyncio.create_task(status_reads())
        started = time.perf_counter()
        await asyncio.gather(*(subscriber(i) for i in range(n)))
        await reader
        elapsed = time.perf_counter() - started
        r = await http.get(f"/api/v2/jobs/{job}", headers=auth)
        final = r.json()
        print(f"job: {final['status']}, {final['rows_committed']} rows committed in {final['duration_ms']} ms "
              f"({final['rows_per_sec']:.0f} rows/s)")
        print(f"subscribers: {n}, saw the final state: {finals}, progress messages: {progress_msgs}")
        if "p50" in reads:
            print(f"status reads: {reads['requests']} over {read_seconds} s from {n} connections "
                  f"(job {reads['status_at_start']} at the start, {reads['status_at_end']} at the end): "
                  f"p50 {reads['p50']} ms, p95 {reads['p95']} ms, p99 {reads['p99']} ms, max {reads['max']} ms")
        print(f"errors: {len(errors)}")
        for e in errors[:10]:
            print("  " + e)
        print(f"elapsed: {elapsed:.1f} s")
        sys.exit(0 if not errors and finals == n and final["status"] == "succeeded" else 1)


asyncio.run(main())
