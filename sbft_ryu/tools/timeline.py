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
    return records, summary


def done_at(record):
    return record["t"] + record["latency"]


def outage(records, fault_at):
    """The client-visible outage around ``fault_at`` (a monotonic time)."""
    before = [done_at(r) for r in records if r["ok"] and r["t"] < fault_at]
    after = [done_at(r) for r in records if r["ok"] and r["t"] >= fault_at]
    last_ok = max(before) if before else None
    first_ok = min(after) if after else None
    window_end = first_ok if first_ok is not None else float("inf")
    window_start = last_ok if last_ok is not None else float("-inf")
    failed = sum(1 for r in records if not r["ok"] and window_start <= r["t"] <= window_end)
    seconds = first_ok - last_ok if (first_ok is not None and last_ok is not None) else None
    return Outage(seconds=seconds, failed=failed, recovered=first_ok is not None)
