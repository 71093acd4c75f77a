#!/usr/bin/python3
"""Benchmark (not a test): what clients see of a controller restart, with the state file and
without it (today's behaviour before the state file), in the same run.

    .venv/bin/python mininet/bench_restart.py --runs 5

A client sends one GET every 20 ms, each on a new TCP connection with a 100 ms deadline (open
loop), for PACE_S seconds. After SETTLE_S, ryu-manager is SIGKILLed, stays dead DEAD_S, and is
started again with the same config and ports. Per run: the requests that failed and the
longest gap between two successive successful completions. One lab per setting (passive mode,
agents on, three replicas), one setting after the other (two labs cannot run at once); before
each run the tier is back to every replica up with a primary. Two scenarios per setting:
"as started" (lb1, the first configured replica, is primary at epoch 1: what a controller
without state would elect again) and "after a failover" (lb1 was crashed and restarted before
the run, so lb2 is primary at a later epoch and lb1 a backup). Then, in active mode without
``active_secret`` configured, one 3 MiB download (1 MiB/s) running across each restart: whether
it completes byte for byte (``--only downloads``; ``--only requests`` for the part above).

Writes results/bench-restart-<time>.json and prints the Markdown table docs/benchmarks.md
quotes.
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

from sbft_lab import stream_backend, timeline
from sbft_lab.lab import Lab, topo, wait_until

# the one sys.path shim: bench_failover is this script's sibling (a script, not a module)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_failover  # noqa: E402

REPO = topo.REPO
SETTLE_S, DEAD_S, PACE_S = 1.0, 1.0, 6.0
SETTINGS = {"state file off": "state_file =\n", "state file on": ""}
SCENARIOS = ("as started", "after a failover")
SIZE, RATE = 3 * 1024 * 1024, 1024 * 1024


def log(message):
    print(message, flush=True)


def longest_gap(records):
    """Seconds between two successive successful completions (the client's longest wait)."""
    done = sorted(timeline.done_at(r) for r in records if r["ok"])
    return max((b - a for a, b in zip(done, done[1:])), default=None)


def fail_over_from_lb1(lab):
    """Crash lb1 while it is primary and bring it back as a backup."""
    if lab.health()["primary"] != "lb1":
        return
    lab.crash("lb1")
    wait_until(lambda: lab.health()["primary"] not in ("lb1", None), 10, 0.05, "failover")
    lab.restart("lb1")
    wait_until(lambda: lab.health()["status"] == "ok", 30, 0.05, "lb1 back")


def one_run(lab, name, scenario):
    wait_until(lambda: lab.health()["status"] == "ok", 30, 0.05, "every replica up")
    if scenario == "after a failover":
        fail_over_from_lb1(lab)
    primary = lab.health()["primary"]
    proc, path = lab.pacer("c1", name, interval=0.02, timeout=0.1, duration=PACE_S)
    time.sleep(SETTLE_S)
    epoch = lab.health()["epoch"]
    lab.kill_controller()
    time.sleep(DEAD_S)
    lab.start_controller()
    proc.wait(timeout=PACE_S + 30)
    records, _ = timeline.load(path)
    health = lab.health()
    return {"failed": sum(not r["ok"] for r in records), "sent": len(records),
            "longest_gap_s": longest_gap(records), "epoch_before": epoch,
            "epoch_after": health["epoch"], "primary_before": primary,
            "primary_after": health["primary"]}


def download_run(lab, run):
    wait_until(lambda: lab.health()["status"] == "ok", 30, 0.05, "every replica up")
    path = f"/stream/{SIZE}?rate={RATE}&t=restart-{run}"
    proc, out = lab.fetch("c1", f"download-{run}.json", path, timeout=60)
    time.sleep(SETTLE_S)
    lab.kill_controller()
    time.sleep(DEAD_S)
    lab.start_controller()
    proc.wait(timeout=90)
    with open(out, encoding="utf-8") as handle:
        (result,) = json.load(handle)["results"]
    expected = hashlib.sha256(stream_backend.content(path.split("?")[0], SIZE)).hexdigest()
    return {"intact": bool(result["ok"] and result["bytes"] == SIZE
                           and result["sha256"] == expected),
            "bytes": result["bytes"], "error": result.get("error")}


def report(results):
    lines = ["| state file | before the restart | failed requests per run | longest gap per "
             "run (s) | longest gap, median | primary, epoch kept |",
             "|---|---|---|---|---|---|"] if results["runs"] else []
    for key, runs in results["runs"].items():
        setting, scenario = key.split(": ")
        failed = [r["failed"] for r in runs]
        gaps = [r["longest_gap_s"] for r in runs if r["longest_gap_s"] is not None]
        kept = sum(r["primary_after"] == r["primary_before"]
                   and r["epoch_after"] >= r["epoch_before"] for r in runs)
        lines.append(f"| {setting.split()[-1]} | {scenario} | {', '.join(map(str, failed))} | "
                     f"{', '.join(f'{g:.3f}' for g in gaps)} | "
                     f"{statistics.median(gaps):.3f} s | {kept} of {len(runs)} |")
    if results.get("downloads"):
        lines += ["", "| state file | active-mode downloads intact across the restart |",
                  "|---|---|"]
        for setting, runs in results["downloads"].items():
            intact = sum(r["intact"] for r in runs)
            lines.append(f"| {setting.split()[-1]} | {intact} of {len(runs)} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=bench_failover.positive_int, default=5,
                        help="restarts per setting and scenario")
    parser.add_argument("--only", choices=("requests", "downloads"), action="append",
                        help="run only these parts (repeatable)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (Mininet): run it as root")
    return args


def main(argv=None):
    args = parse_args(argv)
    from mininet.log import setLogLevel

    setLogLevel("warning")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {"date": stamp, "command": " ".join(sys.argv), "runs": {}, "downloads": {}}
    parts = set(args.only or ("requests", "downloads"))
    labs = {}
    try:
        for setting, extra in SETTINGS.items() if "requests" in parts else ():
            rundir = os.path.join("/tmp", f"sbft-bench-restart-{stamp}", setting.split()[-1])
            os.makedirs(rundir)
            labs[setting] = Lab(agents=True, sbft_extra=extra, rundir=rundir)
            labs[setting].start()
            log(f"{setting}: lab up ({rundir})")
            for scenario in SCENARIOS:
                runs = results["runs"][f"{setting}: {scenario}"] = []
                for run in range(args.runs):
                    runs.append(one_run(labs[setting], f"{scenario[:5]}-{run}.jsonl",
                                        scenario))
                    log(f"  {scenario}, run {run + 1}: {runs[-1]}")
            labs.pop(setting).stop()
        for setting, extra in SETTINGS.items() if "downloads" in parts else ():
            rundir = os.path.join("/tmp", f"sbft-bench-restart-{stamp}",
                                  "active-" + setting.split()[-1])
            os.makedirs(rundir)
            labs[setting] = Lab(agents=True, skew=True, sbft_extra="mode = active\n" + extra,
                                rundir=rundir)
            labs[setting].start()
            log(f"{setting}, active mode: lab up ({rundir})")
            runs = results["downloads"][setting] = []
            for run in range(args.runs):
                runs.append(download_run(labs[setting], run))
                log(f"  download {run + 1}: {runs[-1]}")
            labs.pop(setting).stop()
    finally:
        for lab in labs.values():
            lab.stop()
    os.makedirs(os.path.join(REPO, "results"), exist_ok=True)
    out = os.path.join(REPO, "results", f"bench-restart-{stamp}.json")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    print()
    print(report(results))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
