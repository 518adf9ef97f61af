"""Fault points for the crash tests: the process kills itself with SIGKILL at a named point of the data
path, so a test can crash a worker exactly between two steps of the delivery contract instead of at a
random moment (the way Kafka's own system tests place their faults).

`TICKFLOW_FAULT_POINT=<point>@<n>` arms one point, fired the n-th time execution reaches it (default 1).
`<point>@<n>:stop` stops the process there instead (SIGSTOP, a zombie with a batch in flight): a test sends
SIGCONT once another worker took its partitions, and the process goes on from that point, e.g. to a commit
the group must refuse. `<point>@<n>:park` makes the stage's consumer forget its group coordinator there, with
its lookup parked for good (`park_lookup`: what aiokafka's did after a broker restart in CI), so a test sees the
stage replace its consumer. It is read once at import and meant for tests only; unset, `reach()` is one
comparison. The points:

- `write.after_insert`: the batch's rows are inserted, their transaction is not committed;
- `<stage>.before_offset_commit`: the batch is done (rows committed, or outputs acknowledged), its
  offsets are not committed to Kafka; `<stage>` is `validate` or `write`;
- `<stage>.in_revoke`: inside a rebalance, as the stage's partitions are being revoked.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

POINTS = ("write.after_insert", "validate.before_offset_commit", "write.before_offset_commit",
          "validate.in_revoke", "write.in_revoke")


MODES = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "park": None}


def _parse(spec: str) -> tuple[str, int, str]:
    """`<point>[@<n>][:<mode>]` -> (point, n, mode); empty: nothing armed."""
    if not spec:
        return "", 0, "kill"
    spec, _, mode = spec.partition(":")
    name, _, nth = spec.partition("@")
    if name not in POINTS:
        raise ValueError(f"TICKFLOW_FAULT_POINT: unknown point {name!r}; known: {', '.join(POINTS)}")
    if (mode := mode or "kill") not in MODES:
        raise ValueError(f"TICKFLOW_FAULT_POINT: unknown mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "park" and not name.endswith(".before_offset_commit"):
        raise ValueError(f"TICKFLOW_FAULT_POINT: a stage's consumer is parked only at <stage>.before_offset_commit, "
                         f"not at {name}")
    return name, int(nth or 1), mode


_armed, _nth, _mode = _parse(os.environ.get("TICKFLOW_FAULT_POINT", ""))
_reached = 0


def reach(point: str) -> bool:
    """Die (or stop) here, without cleanup, if this is the armed point's n-th passage. A stop fires once: after
    SIGCONT the process goes on from here as if nothing happened (a paused process notices nothing itself). True
    when a park fires here (once): the caller parks its consumer's lookup (`park_lookup`)."""
    global _reached
    if point != _armed:
        return False
    _reached += 1
    if _reached == _nth or (_mode == "kill" and _reached > _nth):
        sig = MODES[_mode]
        os.write(2, f"tickflow fault point {point} reached ({_reached}): {sig.name if sig else _mode}\n".encode())
        if sig is None:
            return True
        os.kill(os.getpid(), sig)
    return False


def park_lookup(consumer: Any) -> None:
    """The aiokafka consumer forgets its group coordinator and its lookup (so its heartbeats and commits) never
    returns, as after a broker restart in CI; nothing else of the client is touched."""
    coordinator = consumer._coordinator

    async def parked() -> None:
        await asyncio.Event().wait()

    coordinator.ensure_coordinator_known = parked
    coordinator.coordinator_dead()
