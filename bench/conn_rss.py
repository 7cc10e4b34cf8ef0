#!/usr/bin/env python3
"""Gateway memory per open connection, by what the connection did: `head` (sent one byte of a
request, so the HTTP server holds it), `keepalive` (one finished request, idle), `sse` (an
open SSE stream). Reference for fan-out's RSS per stream (BENCHMARKS.md, section 3).

    python3 bench/conn_rss.py GATEWAY_PID PORT KIND COUNT
"""
import resource
import socket
import sys
import time

REQUESTS = {
    "head": b"G",
    "keepalive": b"GET /load HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "sse": b"GET /subscribe/conn-rss HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def main():
    pid, port, kind, count = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kib(pid)
    held = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(REQUESTS[kind])
        if kind != "head":
            conn.recv(65536)  # the response head (and for SSE nothing more until an event)
        held.append(conn)
    time.sleep(1.5)
    after = rss_kib(pid)
    print(f"  {kind}: {count} connections: gateway RSS {before} -> {after} KiB: "
          f"{(after - before) / count:.2f} KiB per connection")


if __name__ == "__main__":
    main()
