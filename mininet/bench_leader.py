#!/usr/bin/python3
"""Benchmark (not a test): losing the leading controller, and what etcd costs the decision path.

    .venv/bin/python mininet/bench_leader.py --runs 5 [--decision-runs 10]

Part 1, leader loss (``--only leader``). A client sends one GET every 20 ms, each on a new TCP
connection with a 100 ms deadline, for PACE_S seconds. After SETTLE_S:
  * "two controllers, leader SIGKILLed": two ryu-manager in Mininet hosts, one leader elected
    through a 3-member etcd cluster (leader_lease 1 s); the leader is SIGKILLed and stays dead
    (the follower must take over); before the next run the dead one is started again and
    rejoins as a follower;
  * "one controller, restarted (state file)": the single controller of the durable-state
    issue is SIGKILLed, stays dead DEAD_S and is started again with its state file.
Per run: failed requests, the longest gap between two successive successful completions, and
(two controllers) the time from the SIGKILL until the follower says it leads (REST polled
every 20 ms).

Part 2, the decision path (``--only decision``): one controller, agents on, its state in the
local state file vs in etcd on loopback (a one-member etcd on 127.0.0.1,
``coordination = etcd://127.0.0.1:PORT``), in the same run. The primary's agent and HAProxy
are SIGKILLed; the time from that moment to the last flow of the failover installed on the
switch (OVS's per-flow ``duration``, read once after the failover: install time = dump time -
duration, all CLOCK_MONOTONIC) is the decision path: heartbeat silence, the controller's
decision, its state write (a file, or an etcd transaction), the flow-mods. The primary is then
restarted (as a backup) before the next run.

Writes results/bench-leader-<time>.json, docs/leader.png (with ``--docs``), and prints the
Markdown tables docs/benchmarks.md quotes.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

from sbft_lab import timeline
from sbft_lab.lab import Lab, topo, wait_until

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_failover  # noqa: E402  (the sibling script: positive_int, prepare_docs_dir)

REPO = topo.REPO
SETTLE_S, DEAD_S, PACE_S = 1.5, 1.0, 6.0
LEASE_S = 1


def log(message):
    print(message, flush=True)


def longest_gap(records):
    done = sorted(timeline.done_at(r) for r in records if r["ok"])
    return max((b - a for a, b in zip(done, done[1:])), default=None)


def _pace(lab, name):
    return lab.pacer("c1", name, interval=0.02, timeout=0.1, duration=PACE_S)


def _client_view(proc, path):
    proc.wait(timeout=PACE_S + 30)
    records, _ = timeline.load(path)
    return {"failed": sum(not r["ok"] for r in records), "sent": len(records),
            "longest_gap_s": longest_gap(records)}


def leader_run(lab, run):
    leader = wait_until(lab.leader, 30, 0.05, "a leader")
    follower = next(n for n in lab.controller_names if n != leader)
    wait_until(lambda: lab.health(lab.url_of(leader))["status"] == "ok", 30, 0.05,
               "every replica up")
    proc, path = _pace(lab, f"leader-{run}.jsonl")
    time.sleep(SETTLE_S)
    killed_at = time.monotonic()
    lab.kill_controller(leader)
    led_at = wait_until(lambda: (lab.controller_health(follower, 0.3) or {}).get(
        "controller", {}).get("role") == "leader" and time.monotonic(), 15, 0.02,
        "the follower to lead")
    result = _client_view(proc, path)
    result.update(takeover_s=led_at - killed_at, killed=leader, new_leader=follower)
    lab.start_controller(leader)  # it rejoins as a follower for the next run
    return result


def restart_run(lab, run):
    wait_until(lambda: lab.health()["status"] == "ok", 30, 0.05, "every replica up")
    proc, path = _pace(lab, f"restart-{run}.jsonl")
    time.sleep(SETTLE_S)
    lab.kill_controller()
    time.sleep(DEAD_S)
    lab.start_controller()
    return _client_view(proc, path)


def _flow_ages():
    at = time.monotonic()
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "s1"],
                         capture_output=True, text=True, timeout=10).stdout
    return at, [float(m) for m in re.findall(r"duration=([0-9.]+)s", out)]


def decision_run(lab):
    wait_until(lambda: lab.health()["status"] == "ok", 30, 0.05, "every replica up")
    time.sleep(0.5)
    primary = lab.health()["primary"]
    crashed_at = time.monotonic()
    lab.crash(primary)
    wait_until(lambda: lab.health()["primary"] not in (None, primary), 10, 0.01, "failover")
    time.sleep(0.5)  # the whole batch on the switch
    at, ages = _flow_ages()
    installed = [at - age for age in ages if at - age > crashed_at]
    lab.restart(primary)
    if not installed:
        return {"decision_s": None, "flows": 0}
    return {"decision_s": max(installed) - crashed_at,
            "first_flow_s": min(installed) - crashed_at, "flows": len(installed)}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def report(results):
    lines = []
    if results["leader"]:
        lines += ["| setting | failed requests per run | longest gap per run (s) | longest gap, "
                  "median | takeover per run (s) |", "|---|---|---|---|---|"]
        for setting, runs in results["leader"].items():
            takeovers = [r.get("takeover_s") for r in runs]
            lines.append(
                f"| {setting} | {', '.join(str(r['failed']) for r in runs)} | "
                f"{', '.join(_fmt(r['longest_gap_s']) for r in runs)} | "
                f"{_fmt(_median(r['longest_gap_s'] for r in runs))} s | "
                + (", ".join(_fmt(t, 2) for t in takeovers) if any(takeovers) else "–")
                + " |")
    if results["decision"]:
        lines += ["", "| state | primary's death → last failover flow on the switch, per run "
                  "(ms) | median (ms) |", "|---|---|---|"]
        medians = {}
        for setting, runs in results["decision"].items():
            values = [r["decision_s"] for r in runs]
            medians[setting] = _median(values)
            lines.append(f"| {setting} | "
                         f"{', '.join(_fmt(v * 1000 if v is not None else None, 0) for v in values)}"
                         f" | {_fmt(medians[setting] * 1000 if medians[setting] else None, 0)} |")
        if all(medians.get(k) is not None for k in ("state file", "etcd on loopback")):
            added = (medians["etcd on loopback"] - medians["state file"]) * 1000
            lines.append(f"\netcd adds {added:+.1f} ms to the median (target: <= 10 ms).")
    return "\n".join(lines)


def plot(results, docs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    if results["leader"]:
        names = list(results["leader"])
        data = [[r["longest_gap_s"] * 1000 for r in results["leader"][n]
                 if r["longest_gap_s"] is not None] for n in names]
        axes[0].boxplot(data)
        axes[0].set_xticks(range(1, len(names) + 1), [n.replace(", ", ",\n") for n in names])
        axes[0].set_ylabel("client's longest gap (ms)")
        axes[0].set_title("Losing the controller (GET every 20 ms)", fontsize=9)
    if results["decision"]:
        names = list(results["decision"])
        data = [[r["decision_s"] * 1000 for r in results["decision"][n]
                 if r["decision_s"] is not None] for n in names]
        axes[1].boxplot(data)
        axes[1].set_xticks(range(1, len(names) + 1), names)
        axes[1].set_ylabel("primary's death → new flows (ms)")
        axes[1].set_title("Decision path: state file vs etcd on loopback", fontsize=9)
    for ax in axes:
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(docs, "leader.png"), dpi=110)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=bench_failover.positive_int, default=5,
                        help="leader losses and restarts per setting")
    parser.add_argument("--decision-runs", type=bench_failover.positive_int, default=10,
                        help="primary failovers per state setting")
    parser.add_argument("--only", choices=("leader", "decision"), action="append",
                        help="run only these parts (repeatable)")
    parser.add_argument("--docs", default=None, help="folder for leader.png (none: no plot)")
    parser.add_argument("--replot", metavar="RESULTS_JSON",
                        help="only print the tables (and draw the plot) from a results file")
    args = parser.parse_args(argv)
    if args.replot and not os.path.isfile(args.replot):
        parser.error(f"--replot {args.replot}: no such file")
    if not args.replot and os.geteuid() != 0:
        parser.error("needs root (Mininet): run it as root")
    if args.docs:
        bench_failover.prepare_docs_dir(parser, args.docs)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        with open(args.replot, encoding="utf-8") as handle:
            results = json.load(handle)
        print(report(results))
        if args.docs:
            plot(results, args.docs)
        return 0
    from mininet.log import setLogLevel

    setLogLevel("warning")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {"date": stamp, "command": " ".join(sys.argv), "leader": {}, "decision": {}}
    parts = set(args.only or ("leader", "decision"))
    base = os.path.join("/tmp", f"sbft-bench-leader-{stamp}")
    plans = []
    if "leader" in parts:
        plans += [("leader", "two controllers, leader SIGKILLed",
                   dict(controllers=2, leader_lease=LEASE_S), leader_run, args.runs),
                  ("leader", "one controller, restarted (state file)", {}, restart_run,
                   args.runs)]
    if "decision" in parts:
        plans += [("decision", "state file", {}, lambda lab, run: decision_run(lab),
                   args.decision_runs),
                  ("decision", "etcd on loopback", dict(loopback_etcd=True),
                   lambda lab, run: decision_run(lab), args.decision_runs)]
    for part, setting, options, one_run, runs in plans:
        rundir = os.path.join(base, re.sub(r"\W+", "-", setting))
        os.makedirs(rundir)
        lab = Lab(agents=True, rundir=rundir, **options)
        try:
            lab.start()
            log(f"{setting}: lab up ({rundir})")
            done = results[part][setting] = []
            for run in range(runs):
                done.append(one_run(lab, run))
                log(f"  run {run + 1}: {done[-1]}")
        finally:
            lab.stop()
    os.makedirs(os.path.join(REPO, "results"), exist_ok=True)
    out = os.path.join(REPO, "results", f"bench-leader-{stamp}.json")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    print()
    print(report(results))
    print(f"\nresults: {out}")
    if args.docs:
        plot(results, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
