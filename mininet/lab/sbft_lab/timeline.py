"""Reading a pacer's request log: outages and failed requests around a fault.

Times are CLOCK_MONOTONIC seconds, the same in every network namespace of one machine, so a
fault injected by the test or benchmark process lines up with the client's log.
"""

import json
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Outage:
    # from the completion of the last success sent before the fault to the completion of the
    # first success sent after it
    seconds: Optional[float]
    failed: int  # requests that failed in between
    recovered: bool


def load(path):
    """(records, summary) from a pacer JSON-lines file; tolerates a truncated last line."""
    records, summary = [], None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if "summary" in item:
                summary = item["summary"]
            else:
                records.append(item)
    records.sort(key=lambda record: record["seq"])  # the pacer writes in completion order
    return records, summary


def done_at(record):
    return record["t"] + record["latency"]


def outage(records, fault_at):
    """The client-visible outage around ``fault_at`` (a monotonic time).

    Seconds: from the completion of the last success sent before the fault to the completion
    of the first success sent after it (never negative). Failed: requests sent between those
    two (by sequence number)."""
    before = [r for r in records if r["ok"] and r["t"] < fault_at]
    after = [r for r in records if r["ok"] and r["t"] >= fault_at]
    last_seq = max((r["seq"] for r in before), default=-1)
    first = min(after, key=lambda r: r["seq"]) if after else None
    first_seq = first["seq"] if first else float("inf")
    failed = sum(1 for r in records if not r["ok"] and last_seq < r["seq"] < first_seq)
    seconds = None
    if first is not None and before:
        seconds = max(0.0, done_at(first) - max(done_at(r) for r in before))
    return Outage(seconds=seconds, failed=failed, recovered=first is not None)
