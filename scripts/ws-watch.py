#!/usr/bin/env python3
"""Follows one job over wss:// (the WebSocket protocol of SPEC §6) the way a
dashboard does: subscribe, read progress and state changes, reconnect when
the connection drops (a server behind the proxy may die), until the job's
final state. Python's standard library only: the handshake and frames are
written out here.

usage: ws-watch.py HOST PORT CAFILE TOKEN JOB_ID DEADLINE_SECONDS
prints one line per message: `progress <rows_committed>` or `job <status>`;
exits 0 once a final state is seen, 1 at the deadline."""
import base64, json, os, socket, ssl, struct, sys, time

host, port, cafile, token, job, deadline = sys.argv[1:7]
deadline = time.time() + float(deadline)
FINAL = {"succeeded", "failed", "cancelled", "skipped"}


def frame(opcode, payload):
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def messages(sock):
    while True:
        b0, b1 = read_exact(sock, 2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", read_exact(sock, 2))[0]
        elif n == 127:
            n = struct.unpack("!Q", read_exact(sock, 8))[0]
        payload = read_exact(sock, n)
        opcode = b0 & 0x0F
        if opcode == 8:
            raise ConnectionError("close frame")
        if opcode == 9:
            sock.sendall(frame(10, payload))
        elif opcode == 1:
            yield json.loads(payload)


def watch():
    ctx = ssl.create_default_context(cafile=cafile)
    sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=30), server_hostname=host)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /api/v2/ws?access_token={token} HTTP/1.1\r\nHost: {host}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += read_exact(sock, 1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise ConnectionError(head.split(b"\r\n")[0].decode())
    sock.sendall(frame(1, json.dumps({"type": "subscribe", "job_id": job}).encode()))
    for m in messages(sock):
        if m.get("job_id") != job:
            continue
        if m["type"] == "progress":
            print("progress", m["rows_committed"], flush=True)
        elif m["type"] == "job":
            print("job", m["status"], flush=True)
            if m["status"] in FINAL:
                return True
    return False


while time.time() < deadline:
    try:
        if watch():
            sys.exit(0)
    except (OSError, ConnectionError) as e:
        print("reconnect", e, flush=True)
        time.sleep(0.2)
sys.exit(1)
