"""An upload across a failover, measured the way issue 10 asks (shared by the integration
tests and mininet/bench_uploads.py).

:func:`across_fault` starts an upload in ``c1``, injects the fault (SIGKILL of the primary
lb1, or its link cut) once the client was acknowledged a given number of bytes, records at the
fault the client's acknowledged bytes (``ss -ti`` in the client) and each survivor's received
bytes (its proxy's socket, sampled for a second after the fault: bytes the client was
acknowledged are never resent, so a survivor reaches that count only if it had them), and
returns what happened. :func:`had_all` is the issue's oracle.
"""

import json
import os
import time

from sbft_lab.lab import VIP, SERVICE_PORT, http_json, topo, wait_until

CLIENT = topo.plan()["clients"][0]
SURVIVORS = ("lb2", "lb3")
SAMPLE_S = 5.0  # survivors' received bytes are sampled after the fault until the upload
                # ends or this long: a survivor that continues from bytes its agent kept
                # reaches the acknowledged count only once its proxy catches up


def rmem_max():
    with open("/proc/sys/net/ipv4/tcp_rmem", encoding="ascii") as handle:
        return int(handle.read().split()[2])


def client_acked(lab):
    sockets = [s for s in lab.tcp_bytes(CLIENT["name"]) if s["peer"] == f"{VIP}:{SERVICE_PORT}"]
    return max((s["bytes_acked"] for s in sockets), default=0)


def received(lab, name):
    """Bytes the replica's proxy socket received from the client (0: none, or unreadable)."""
    try:
        sockets = lab.tcp_bytes(name)
    except Exception:  # (a host whose shell is busy: nothing to read now)
        return 0
    return max((s["bytes_received"] for s in sockets
                if (s["peer"] or "").startswith(CLIENT["ip"] + ":")), default=0)


def inject(lab, fault, replica="lb1"):
    if fault == "crash":
        lab.crash(replica)
    elif fault == "link":
        lab.set_link(replica, False)
    else:
        raise ValueError(f"fault must be crash or link, got {fault!r}")


def promotions(lab, since):
    """[(when, replica)] of the changes of primary after ``since`` (CLOCK_MONOTONIC, as the
    client's), oldest first."""
    asked = time.monotonic()
    events = http_json(lab.api + "/sbft/events")["events"]
    found = [(asked - e["age_s"], e["replica"]) for e in events
             if e["change"] == "primary" and asked - e["age_s"] >= since - 0.01]
    return sorted(found)


def promoted_before(run, moment):
    """When the last promotion before ``moment`` happened (the primary that reset)."""
    before = [at for at, _ in run["promotions"] if at <= moment]
    return before[-1] if before else run["promotions"][0][0]


def _ended(out):
    """How the client's upload ended, in a line (for a failure message)."""
    try:
        with open(out, encoding="utf-8") as handle:
            result = json.load(handle)
    except (OSError, ValueError) as exc:
        return f"no result ({exc})"
    return (f"{result.get('outcome')} ({result.get('error')}), responses "
            f"{[r.get('status') for r in result.get('responses', [])]}, "
            f"acked {result.get('acked')}")


def _changes(lab):
    try:
        events = http_json(lab.api + "/sbft/events")["events"]
    except Exception as exc:  # (the message must not hide the failure it explains)
        return f"unreadable ({exc!r})"
    return [f"{e['replica']}: {e['change']} ({e['age_s']} s ago)" for e in events[:8]]


def across_fault(lab, fault, tag, size, count=1, chunked=False, fault_at=None, stall=10.0):
    """One upload (``count`` pipelined bodies of ``size``), ``fault`` injected once
    ``fault_at`` bytes (default: a third) were acknowledged: {"result" (the client's JSON),
    "acked", "received" {survivor: bytes}, "primary", "promoted_at", "fault_at"}."""
    total = count * size
    proc, out, mark = lab.upload(CLIENT["name"], f"{tag}.json", tag, size, count=count,
                                 chunked=chunked, mark_at=fault_at or total // 3, stall=stall,
                                 timeout=150)
    wait_until(lambda: os.path.exists(mark) or proc.poll() is not None, 90, 0.005,
               "the fault's point of the upload")
    if proc.poll() is not None:
        raise AssertionError(f"the upload ended before the fault: {_ended(out)}; the "
                             f"controller's events, newest first: {_changes(lab)}")
    before = time.monotonic()  # (a link cut's failover may end before inject returns)
    inject(lab, fault)
    at = time.monotonic()
    acked = client_acked(lab)
    state = survivors_state(lab)
    got = dict.fromkeys(SURVIVORS, 0)
    while time.monotonic() - at < SAMPLE_S and proc.poll() is None:
        for name in SURVIVORS:
            got[name] = max(got[name], received(lab, name))
    primary = wait_until(lambda: lab.health()["primary"] not in ("lb1", None)
                         and lab.health()["primary"], 5, 0.02, "failover")
    proc.wait(timeout=stall + 150)
    with open(out, encoding="utf-8") as handle:
        result = json.load(handle)
    moves = promotions(lab, before)
    return {"result": result, "acked": acked, "received": got, "primary": primary,
            "promotions": moves, "promoted_at": moves[0][0] if moves else None,
            "fault_at": at, "at_fault": state}


STATE_COUNTERS = ("bytes_missing", "parked_bytes", "client_gap_bytes", "client_beyond_window",
                  "client_reinjected", "client_park_overflow", "nfq_dropped")


def survivors_state(lab):
    """Each survivor's client-input counters by its last heartbeat (at most one interval old):
    what it lacked and kept at the fault, for the record."""
    try:
        replicas = {r["name"]: r["counters"] for r in lab.health()["replicas"]}
    except Exception:  # (the record is best effort; the verdict does not depend on it)
        return {}
    return {name: {key: replicas.get(name, {}).get(key) for key in STATE_COUNTERS}
            for name in SURVIVORS}


def had_all(run):
    """Whether a survivor had every byte the client was acknowledged at the fault."""
    return any(value >= run["acked"] for value in run["received"].values())
