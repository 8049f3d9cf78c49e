"""Drives `nexus mcp` (stdio) or `/mcp` (Streamable HTTP) with the official
MCP Python SDK, as an assistant would, and checks what it answers.

Run by tests/mcp.rs, which sets up the database, the files and (for HTTP)
the server, and checks the tables afterwards. Settings come from the
environment:

  MCP_TRANSPORT   stdio | http
  MCP_MODE        the SDK's connect mode: auto (the 2026 protocol) | legacy
                  (the initialize handshake)
  NEXUS_BIN       stdio: the binary; it inherits this environment
  MCP_URL, MCP_TOKEN, MCP_VIEWER_TOKEN
                  http: the endpoint and an uploader's and a viewer's tokens
  MCP_GOOD_FILE   a `person` CSV with MCP_GOOD_ROWS rows, of which the lines
                  in MCP_REJECT_LINES (comma separated) are rejected
  MCP_BIG_FILE    an `ev` CSV big enough to cancel while it runs
  MCP_SCENARIOS   the scenarios to run, comma separated (default: all but
                  leave_running, which needs MCP_LEFT_FILE)
  MCP_OUTSIDE_FILE, MCP_LINK_FILE
                  http: a file outside NEXUS_MCP_ROOTS, and a symlink inside
                  them pointing to it

Prints one JSON object of facts for the Rust side on stdout; any check that
fails raises, and the process exits non-zero with the reason.
"""

import asyncio
import json
import os
import sys

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

TOOLS = {
    "load_file", "job_status", "list_jobs", "cancel_job", "job_rejects",
    "list_models", "describe_model", "health", "cache_stats", "cache_invalidate",
}
READ_ONLY = {"job_status", "list_jobs", "job_rejects", "list_models", "describe_model", "health", "cache_stats"}
FINISHED = {"succeeded", "failed", "cancelled", "skipped"}
env = os.environ


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def client(token=None):
    mode = env.get("MCP_MODE", "auto")
    if env["MCP_TRANSPORT"] == "stdio":
        server = StdioServerParameters(command=env["NEXUS_BIN"], args=["mcp"], env=dict(env))
    else:
        headers = {"Authorization": f"Bearer {token or env['MCP_TOKEN']}"}
        server = streamable_http_client(env["MCP_URL"], http_client=create_mcp_http_client(headers=headers))
    return Client(server, mode=mode, read_timeout_seconds=120)


def structured(result, what):
    check(not result.is_error, f"{what} failed: {result.content}")
    check(result.structured_content is not None, f"{what} has no structured content")
    check(result.content and result.content[0].text, f"{what} has no text")
    return result.structured_content


def refused(result, what, words):
    check(result.is_error, f"{what} should be a tool error: {result}")
    text = " ".join(c.text for c in result.content)
    for w in words:
        check(w in text, f"{what}: the message should say `{w}`: {text}")
    return text


async def wait_status(c, job_id, statuses, deadline=120):
    with anyio.fail_after(deadline):
        while True:
            job = structured(await c.call_tool("job_status", {"job_id": job_id}), "job_status")
            if job["status"] in statuses:
                return job
            await anyio.sleep(0.1)


async def describe(c, facts):
    """initialize, tools with schemas and annotations, templates, models."""
    check(c.server_info is not None and c.server_info.name == "nexus", f"server info: {c.server_info}")
    tools = {t.name: t for t in (await c.list_tools()).tools}
    check(set(tools) == TOOLS, f"tools: {sorted(tools)}")
    for name, t in tools.items():
        check(t.description and len(t.description) > 40, f"{name}: a description for a newcomer")
        check(t.input_schema.get("type") == "object", f"{name}: input schema")
        check(t.output_schema and t.output_schema.get("type") == "object", f"{name}: output schema")
        a = t.annotations
        check(a is not None and a.read_only_hint == (name in READ_ONLY), f"{name}: readOnlyHint {a}")
        if name not in READ_ONLY:
            check(a.destructive_hint is True, f"{name}: destructiveHint")
    check(tools["cancel_job"].annotations.idempotent_hint is True, "cancel_job is idempotent")
    check("from_job" in tools["load_file"].input_schema["properties"], "load_file takes from_job")
    templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
    check(templates == {"nexus://jobs/{job_id}", "nexus://jobs/{job_id}/rejects", "nexus://models/{name}"},
          f"templates: {templates}")
    models = structured(await c.call_tool("list_models", {}), "list_models")["models"]
    check({"person", "ev"} <= {m["name"] for m in models}, f"models: {models}")
    person = structured(await c.call_tool("describe_model", {"model": "person"}), "describe_model")
    check(person["table"] == "person" and person["key"] == ["id"], f"person: {person}")
    health = structured(await c.call_tool("health", {}), "health")
    check(health["postgres"]["status"] == "ok", f"health: {health}")
    stats = structured(await c.call_tool("cache_stats", {}), "cache_stats")
    check("models" in stats, f"cache_stats: {stats}")
    facts["protocol"] = c.protocol_version


async def load_with_progress(c, facts):
    """A load followed by progress notifications to its end; its rejects."""
    seen = []

    async def progress(p, total, message):
        seen.append((p, total, message))

    job = structured(
        await c.call_tool("load_file", {"model": "person", "path": env["MCP_GOOD_FILE"]}, progress_callback=progress),
        "load_file with progress",
    )
    rows, lines = int(env["MCP_GOOD_ROWS"]), [int(x) for x in env["MCP_REJECT_LINES"].split(",")]
    check(job["status"] == "succeeded", f"the followed load ended: {job}")
    check(job["rows_committed"] == rows - len(lines) and job["rows_rejected"] == len(lines), f"counts: {job}")
    check(seen, "progress notifications arrived")
    values = [p for p, _, _ in seen]
    check(all(a < b for a, b in zip(values, values[1:])), f"progress grows with each notification: {values}")
    total = seen[-1][1]
    check(total is None or values[-1] == total, f"it ends at its total: {seen[-1]}")
    # Polled, it says the same.
    again = await wait_status(c, job["job_id"], FINISHED)
    check(again["status"] == "succeeded", f"status: {again}")
    rejects = structured(await c.call_tool("job_rejects", {"job_id": job["job_id"], "limit": 5}), "job_rejects")
    check([r["line"] for r in rejects["rejects"]] == lines[:5], f"reject lines: {rejects}")
    check(rejects["groups"] and rejects["groups"][0]["column"] == "age", f"groups: {rejects['groups']}")
    # The same as resources.
    uri = f"nexus://jobs/{job['job_id']}"
    listed = {str(r.uri) for r in (await c.list_resources()).resources}
    check(uri in listed and f"{uri}/rejects" in listed and "nexus://models/person" in listed, f"resources: {listed}")
    body = json.loads((await c.read_resource(uri)).contents[0].text)
    check(body["status"] == "succeeded" and body["job_id"] == job["job_id"], f"job resource: {body}")
    body = json.loads((await c.read_resource(f"{uri}/rejects")).contents[0].text)
    check([r["line"] for r in body["rejects"]] == lines, f"rejects resource: {body}")
    model = json.loads((await c.read_resource("nexus://models/person")).contents[0].text)
    check(model["name"] == "person", f"model resource: {model}")
    facts["progress_notifications"] = len(seen)
    facts["good_job"] = job["job_id"]


async def load_and_poll(c, facts):
    """A load returns at once; polled to its end. Inline content; from_job."""
    content = "id,age\n10001,30\n10002,31\n"
    job = structured(await c.call_tool("load_file", {"model": "person", "content": content}), "load_file content")
    check(job["status"] in {"queued", "running", "succeeded"}, f"returned at once: {job}")
    done = await wait_status(c, job["job_id"], FINISHED)
    check(done["status"] == "succeeded" and done["rows_committed"] == 2, f"content load: {done}")
    # A table loads by its columns, as `nexus load --table` does.
    by_table = structured(
        await c.call_tool("load_file", {"table": "public.person", "content": "id,age\n30001,5\n"}),
        "load_file table",
    )
    by_table = await wait_status(c, by_table["job_id"], FINISHED)
    check(by_table["status"] == "succeeded" and by_table["model"] == "table:public.person", f"table: {by_table}")
    refused(await c.call_tool("load_file", {"table": "public.nothing", "content": "id\n1\n"}), "a missing table",
            ["nothing"])
    # A file with the wrong delimiter fails; its upload is loaded again with
    # the right one.
    wrong = structured(
        await c.call_tool("load_file", {"model": "person", "content": "id;age\n20001;40\n20002;41\n"}),
        "load_file wrong delimiter",
    )
    failed = await wait_status(c, wrong["job_id"], FINISHED)
    check(failed["status"] == "failed", f"a `;` file read with `,` fails: {failed}")
    fixed = structured(
        await c.call_tool("load_file", {"model": "person", "from_job": wrong["job_id"], "delimiter": ";"}),
        "load_file from_job",
    )
    fixed = await wait_status(c, fixed["job_id"], FINISHED)
    check(fixed["status"] == "succeeded" and fixed["rows_committed"] == 2, f"from_job: {fixed}")
    old = structured(await c.call_tool("job_status", {"job_id": wrong["job_id"]}), "job_status")
    if env["MCP_TRANSPORT"] == "stdio":
        # Loaded here, the same file with other options replaces the failed job.
        check(old["status"] == "cancelled" and fixed["job_id"] in (old["error"] or ""), f"superseded: {old}")
    else:
        # Queued, each call is its own job, as each upload is.
        check(old["status"] == "failed", f"the failed job stays: {old}")
    jobs = structured(await c.call_tool("list_jobs", {"model": "person", "limit": 10}), "list_jobs")["jobs"]
    check({job["job_id"], wrong["job_id"], fixed["job_id"]} <= {j["job_id"] for j in jobs}, f"list_jobs: {jobs}")
    cancelled = structured(await c.call_tool("list_jobs", {"status": "cancelled"}), "list_jobs cancelled")["jobs"]
    check(all(j["status"] == "cancelled" for j in cancelled), f"status filter: {cancelled}")
    check((wrong["job_id"] in [j["job_id"] for j in cancelled]) == (env["MCP_TRANSPORT"] == "stdio"),
          f"status filter: {cancelled}")


async def malformed(c, facts):
    """Bad calls are tool errors; the session goes on."""
    refused(await c.call_tool("job_status", {"job_id": "not-a-uuid"}), "a bad job id", ["job_id", "UUID"])
    refused(await c.call_tool("job_status", {}), "a missing job id", ["job_id"])
    refused(await c.call_tool("load_file", {"model": "person"}), "no source", ["path", "content", "from_job"])
    refused(await c.call_tool("load_file", {"model": "nobody", "content": "a\n"}), "an unknown model", ["nobody"])
    refused(await c.call_tool("load_file", {"model": "person", "content": "id\n1\n", "colour": "red"}),
            "an unknown argument", ["colour"])
    refused(await c.call_tool("load_file", {"model": "person", "content": "id\n1\n", "mode": "merge"}),
            "a bad mode", ["merge"])
    refused(await c.call_tool("list_jobs", {"limit": 0}), "a bad limit", ["limit"])
    refused(await c.call_tool("load_file", {"model": "person", "content": "id,age\n" + "1,1\n" * 300_000}),
            "too much inline content", ["content", "from_job"])
    refused(await c.call_tool("describe_model", {"model": "nobody"}), "an unknown model", ["nobody"])
    refused(await c.call_tool("job_status", {"job_id": "00000000-0000-0000-0000-000000000000"}),
            "an unknown job", ["no job"])
    if env["MCP_TRANSPORT"] == "stdio":  # an admin
        refused(await c.call_tool("load_file", {"model": "person", "path": "/nonexistent/file.csv"}),
                "a missing file", ["no such file"])
        refused(await c.call_tool("cache_invalidate", {"model": "person"}), "an uncached model", ["not cached"])
    try:
        r = await c.call_tool("no_such_tool", {})
        check(r.is_error, f"an unknown tool is an error: {r}")
    except Exception:  # a protocol error is as good: the session must survive it
        pass
    try:
        await c.read_resource("nexus://jobs/not-a-job")
        raise AssertionError("reading a bad resource should fail")
    except AssertionError:
        raise
    except Exception:
        pass
    # Still usable.
    structured(await c.call_tool("list_models", {}), "list_models after errors")


async def cancel_by_call(c, facts):
    """Cancelling a load_file call that follows progress cancels its job."""
    started = anyio.Event()
    job_ids = []

    async def progress(p, total, message):
        started.set()

    async def call():
        await c.call_tool("load_file", {"model": "ev", "path": env["MCP_BIG_FILE"]}, progress_callback=progress)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        with anyio.fail_after(120):
            await started.wait()
        tg.cancel_scope.cancel()
    # The job the call started: the newest ev job.
    with anyio.fail_after(120):
        while True:
            jobs = structured(await c.call_tool("list_jobs", {"model": "ev", "limit": 1}), "list_jobs")["jobs"]
            if jobs and jobs[0]["status"] in FINISHED:
                break
            await anyio.sleep(0.1)
    job_ids.append(jobs[0]["job_id"])
    check(jobs[0]["status"] == "cancelled", f"the cancelled call's job: {jobs[0]}")
    facts["cancelled_by_call"] = jobs[0]


async def cancel_by_tool(c, facts):
    """cancel_job stops a running load at a batch boundary."""
    job = structured(await c.call_tool("load_file", {"model": "ev", "path": env["MCP_BIG_FILE"], "force": True}),
                     "load_file big")
    with anyio.fail_after(120):
        while True:
            now = structured(await c.call_tool("job_status", {"job_id": job["job_id"]}), "job_status")
            if now["status"] == "running" and now["rows_committed"] > 0:
                break
            check(now["status"] in {"queued", "running"}, f"still going: {now}")
            await anyio.sleep(0.05)
    structured(await c.call_tool("cancel_job", {"job_id": job["job_id"]}), "cancel_job")
    done = await wait_status(c, job["job_id"], FINISHED)
    check(done["status"] == "cancelled", f"cancel_job: {done}")
    refused(await c.call_tool("cancel_job", {"job_id": job["job_id"]}), "cancelling a finished job", ["nothing to cancel"])
    facts["cancelled_by_tool"] = done


async def leave_running(c, facts):
    """A load still running when the client goes (stdio: it stops at a batch
    boundary, resumable)."""
    job = structured(await c.call_tool("load_file", {"model": "ev", "path": env["MCP_LEFT_FILE"]}), "load_file")
    with anyio.fail_after(120):
        while True:
            now = structured(await c.call_tool("job_status", {"job_id": job["job_id"]}), "job_status")
            if now["rows_committed"] > 0:
                break
            await anyio.sleep(0.05)
    facts["left_running"] = job["job_id"]


async def http_rules(facts):
    """Roles, roots, authentication and Origin, over HTTP only."""
    async with client(env["MCP_VIEWER_TOKEN"]) as v:
        refused(await v.call_tool("load_file", {"model": "person", "content": "id,age\n1,2\n"}),
                "a viewer loading", ["role", "viewer"])
        refused(await v.call_tool("cancel_job", {"job_id": facts["good_job"]}), "a viewer cancelling", ["role"])
        refused(await v.call_tool("job_status", {"job_id": facts["good_job"]}), "another user's job", ["no job"])
        structured(await v.call_tool("list_models", {}), "a viewer reading models")
        jobs = structured(await v.call_tool("list_jobs", {}), "a viewer listing")["jobs"]
        check(jobs == [], f"a viewer sees only their own jobs: {jobs}")
    async with client() as c:
        refused(await c.call_tool("load_file", {"model": "person", "path": env["MCP_OUTSIDE_FILE"]}),
                "a path outside the roots", ["outside"])
        refused(await c.call_tool("load_file", {"model": "person", "path": env["MCP_LINK_FILE"]}),
                "a symlink out of the roots", ["outside"])
        refused(await c.call_tool("load_file", {"model": "person", "path": "relative.csv"}),
                "a relative path", ["absolute"])
        refused(await c.call_tool("cache_invalidate", {"model": "person"}), "an uploader invalidating", ["role"])
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx2.AsyncClient() as h:
        r = await h.post(env["MCP_URL"], json=init, headers=accept)
        check(r.status_code == 401 and "Bearer" in r.headers.get("www-authenticate", ""), f"no token: {r.status_code}")
        r = await h.post(env["MCP_URL"], json=init, headers={**accept, "Authorization": "Bearer forged"})
        check(r.status_code == 401, f"a forged token: {r.status_code}")
        r = await h.post(env["MCP_URL"], json=init, headers={
            **accept, "Authorization": f"Bearer {env['MCP_TOKEN']}", "Origin": "https://evil.example"})
        check(r.status_code == 403, f"a foreign Origin: {r.status_code} {r.text}")


SCENARIOS = [describe, load_with_progress, load_and_poll, malformed, cancel_by_call, cancel_by_tool]
OPTIONAL = [leave_running]


async def main():
    facts = {}
    wanted = env.get("MCP_SCENARIOS")
    chosen = [s for s in SCENARIOS + OPTIONAL
              if s.__name__ in (wanted.split(",") if wanted else [x.__name__ for x in SCENARIOS])]
    async with client() as c:
        for scenario in chosen:
            await scenario(c, facts)
    if env["MCP_TRANSPORT"] == "http" and not wanted:
        await http_rules(facts)
    print(json.dumps(facts))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BaseException as e:  # noqa: BLE001 - the reason goes to the test's output
        import traceback
        traceback.print_exc()
        print(f"FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
