"""One load through MCP over stdio (`load_file` with a progressToken, the
official Python client), timed from the call to the finished job, and the
latency of `job_status` calls; used by benches/mcp.sh."""
import asyncio
import os
import statistics
import sys
import time

from mcp import Client, StdioServerParameters


async def main(path, calls):
    server = StdioServerParameters(command=os.environ["NEXUS_BIN"], args=["mcp"], env=dict(os.environ))
    async with Client(server, mode="legacy", read_timeout_seconds=600) as c:
        notes = 0

        async def progress(p, total, message):
            nonlocal notes
            notes += 1

        t0 = time.perf_counter()
        r = await c.call_tool("load_file", {"model": "customer", "path": path}, progress_callback=progress)
        load_s = time.perf_counter() - t0
        job = r.structured_content
        assert job["status"] == "succeeded", job
        lat = []
        for _ in range(calls):
            t = time.perf_counter()
            await c.call_tool("job_status", {"job_id": job["job_id"]})
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        print(f"{job['rows_committed']} {load_s:.3f} {notes} {statistics.median(lat):.2f} {lat[int(len(lat) * 0.99) - 1]:.2f}")


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
