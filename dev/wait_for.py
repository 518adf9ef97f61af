#!/usr/bin/env python3
"""Wait until a local service answers a real request (not just an open port).

    dev/wait_for.py kafka HOST:PORT TIMEOUT
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time


def kafka_answers(host: str, port: int) -> bool:
    """Send an ApiVersions v0 request: a broker answers it only once it serves clients."""
    body = struct.pack(">hhih", 18, 0, 1, 8) + b"tickflow"
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            head = s.recv(4)
            if len(head) < 4:
                return False
            (size,) = struct.unpack(">i", head)
            data = b""
            while len(data) < size:
                chunk = s.recv(size - len(data))
                if not chunk:
                    return False
                data += chunk
            (_corr, err) = struct.unpack(">ih", data[:6])
            return err == 0
    except OSError:
        return False


def main() -> int:
    kind, addr, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    host, port = addr.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kind == "kafka" and kafka_answers(host, int(port)):
            return 0
        time.sleep(0.5)
    return 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while `make run` starts the broker: dev/run.py says so, no traceback here.
        # Die of the signal itself, so the calling shell (dev/stack.sh) stops too instead of reporting a broker
        # that "did not answer".
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
