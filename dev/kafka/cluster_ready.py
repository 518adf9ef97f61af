#!/usr/bin/env python3
"""Wait until the three-node loopback cluster serves: every broker answers a Metadata request listing all
`count` brokers (a broker is listed only once the active controller has registered and unfenced it, so this
also proves the metadata quorum has a leader), and the nodes' quorum-state files agree on that leader.

    dev/kafka/cluster_ready.py TIMEOUT COUNT HOST:PORT[,HOST:PORT...] DATA_DIR[,DATA_DIR...]

Prints the quorum leader's node id. Standard library only: it runs before any virtualenv exists.
"""
from __future__ import annotations

import json
import socket
import struct
import sys
import time
from pathlib import Path


def _string(data: bytes, pos: int) -> tuple[str | None, int]:
    (n,) = struct.unpack_from(">h", data, pos)
    pos += 2
    if n < 0:
        return None, pos
    return data[pos:pos + n].decode(), pos + n


def broker_ids(host: str, port: int) -> set[int]:
    """Metadata v4 with no topics: the node ids of the brokers this broker knows alive (empty: no answer)."""
    client = b"tickflow"
    body = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">i?", 0, False)
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(3)
            s.sendall(struct.pack(">i", len(body)) + body)
            head = b""
            while len(head) < 4:
                chunk = s.recv(4 - len(head))
                if not chunk:
                    return set()
                head += chunk
            (size,) = struct.unpack(">i", head)
            data = b""
            while len(data) < size:
                chunk = s.recv(size - len(data))
                if not chunk:
                    return set()
                data += chunk
    except OSError:
        return set()
    pos = 4 + 4  # correlation id, throttle_time_ms
    (n,) = struct.unpack_from(">i", data, pos)
    pos += 4
    ids = set()
    for _ in range(n):
        (node_id,) = struct.unpack_from(">i", data, pos)
        pos += 4
        _, pos = _string(data, pos)  # host
        pos += 4  # port
        _, pos = _string(data, pos)  # rack
        ids.add(node_id)
    return ids


def quorum_leader(data_dirs: list[str]) -> int | None:
    """The leader every node's quorum-state file names, if they all name the same one."""
    leaders = set()
    for d in data_dirs:
        try:
            state = json.loads((Path(d) / "__cluster_metadata-0" / "quorum-state").read_text())
        except (OSError, ValueError):
            return None
        leaders.add(state.get("leaderId", -1))
    if len(leaders) == 1 and (leader := leaders.pop()) >= 0:
        return leader
    return None


def main() -> int:
    timeout, count = float(sys.argv[1]), int(sys.argv[2])
    addrs = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in sys.argv[3].split(","))]
    data_dirs = sys.argv[4].split(",")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(broker_ids(h, p)) == count for h, p in addrs):
            leader = quorum_leader(data_dirs)
            if leader is not None:
                print(leader)
                return 0
        time.sleep(0.5)
    for h, p in addrs:
        print(f"{h}:{p} knows brokers {sorted(broker_ids(h, p))}", file=sys.stderr)
    print(f"quorum leader: {quorum_leader(data_dirs)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
