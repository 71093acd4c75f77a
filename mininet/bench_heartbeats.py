#!/usr/bin/python3
"""Benchmark (not a test): what liveness costs the controller, over UDP and over HTTP, and
what shorter heartbeat settings would buy.

    .venv/bin/python mininet/bench_heartbeats.py                 # about 12 minutes
    .venv/bin/python mininet/bench_heartbeats.py --only cpu --seconds 60

* CPU: one lab, 3 keyed replicas with agents, default interval (50 ms). The controller
  process's CPU time over ``--seconds`` each (the scheduler's exact runtime of every thread,
  ``se.sum_exec_runtime`` in /proc/PID/task/*/sched: the kernel here samples utime/stime at
  its 250 Hz tick, too coarse for 60 wakeups a second; contention from the other processes on
  the shared cores inflates it little): agents beating over UDP, the same
  agents restarted with ``--heartbeat-port 0`` (HTTP), agents stopped. The cost of liveness is
  each "on" figure minus the "off" one, in % of one core.
* Intervals: for each ``--settings`` pair INTERVAL:TIMEOUT, a fresh lab with keyed agents (UDP):
  ``--runs`` crash failovers (SIGKILL of the primary's agent and HAProxy, outage measured as in
  bench_failover.py), then ``--soak-seconds`` of full-load wrk, where every change of epoch is a
  false failover.

Writes results/heartbeats-<time>.json and prints the Markdown tables docs/benchmarks.md quotes.
"""

import argparse
import json
import os
import re
import signal
import statistics
import sys
import time
import urllib.request

import bench_failover as bf
from sbft_lab import timeline
from sbft_lab.lab import Lab, topo, wait_until

SETTINGS = "0.05:0.15,0.02:0.06,0.01:0.03"


def log(message):
    print(message, flush=True)


def counter(lab, event):
    with urllib.request.urlopen(lab.api + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^sbft_controller_total\{event="%s"\} (\S+)$' % event, text, re.M)
    return float(match.group(1)) if match else 0.0


def runtime(pid):
    """CPU seconds of every thread of ``pid``, exact (the scheduler's own count); from
    /proc/PID/stat's tick-sampled utime + stime where the kernel has no sched file."""
    total = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/sched", encoding="ascii") as handle:
                line = next(line for line in handle if line.startswith("se.sum_exec_runtime"))
            total += float(line.split()[-1]) / 1000.0
    except (OSError, StopIteration, ValueError):
        return bf.cpu_seconds(pid)
    return total


def measure(lab, seconds):
    """Controller CPU in % of one core over ``seconds``, and the heartbeats it took."""
    cpu, udp, total = runtime(lab.ryu.pid), counter(lab, "heartbeat_udp"), \
        counter(lab, "heartbeat")
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    return {"cpu_pct": round(100 * (runtime(lab.ryu.pid) - cpu) / elapsed, 3),
            "udp_beats_per_s": round((counter(lab, "heartbeat_udp") - udp) / elapsed, 1),
            "beats_per_s": round((counter(lab, "heartbeat") - total) / elapsed, 1)}


def restart_agents(lab, extra=()):
    for replica in lab.layout["replicas"]:
        host = lab.host(replica["name"])
        host.kill("agent", signal.SIGTERM)  # (it removes its rules on the way out)
        base = getattr(host, "base_agent_argv", None) or list(host.agent_argv)
        host.base_agent_argv = base
        host.agent_argv = base + list(extra)
        host.start_agent()
    wait_until(lambda: lab.health()["status"] == "ok", 30, 0.1, "agents back")


def cpu_part(seconds, rundir):
    with Lab(rundir=rundir, agents=True, keys=True) as lab:
        time.sleep(2.0)
        results = {"seconds": seconds}
        log("  agents on, UDP")
        results["udp"] = measure(lab, seconds)
        log(f"    {results['udp']}")
        restart_agents(lab, ("--heartbeat-port", "0"))
        time.sleep(2.0)
        log("  agents on, HTTP")
        results["http"] = measure(lab, seconds)
        log(f"    {results['http']}")
        for replica in lab.layout["replicas"]:
            lab.host(replica["name"]).kill("agent", signal.SIGTERM)
        time.sleep(2.0)
        log("  agents off")
        results["off"] = measure(lab, seconds)
        log(f"    {results['off']}")
    for channel in ("udp", "http"):
        results[f"{channel}_cost_pct"] = round(results[channel]["cpu_pct"]
                                               - results["off"]["cpu_pct"], 3)
    return results


def interval_part(settings, runs, soak_seconds, rundir):
    results = []
    for index, (interval, timeout) in enumerate(settings):
        extra = f"heartbeat_interval = {interval}\nheartbeat_timeout = {timeout}\n"
        with Lab(rundir=os.path.join(rundir, f"setting{index}"), agents=True, keys=True,
                 sbft_extra=extra) as lab:
            outages = []
            for run in range(runs):
                primary = bf.current_primary(lab)
                proc, path = lab.pacer(bf.CLIENT, f"crash-{run}.jsonl", interval=bf.INTERVAL,
                                       timeout=bf.DEADLINE, duration=bf.SETTLE + 2.0)
                time.sleep(bf.SETTLE)
                fault_at = time.monotonic()
                bf.inject(lab, "crash", primary)
                wait_until(lambda: bf.new_primary(lab, primary), 20, 0.01, "a new primary")
                proc.wait(timeout=60)
                records, _ = timeline.load(path)
                outages.append(timeline.outage(records, fault_at).seconds)
                bf.recover(lab, "crash", primary)
            before = lab.health()["epoch"]
            soak = bf.wrk(lab, soak_seconds, close=False)
            false_failovers = lab.health()["epoch"] - before
        known = [o for o in outages if o is not None]
        row = {"interval_s": interval, "timeout_s": timeout, "outages_s": outages,
               "outage_median_s": round(statistics.median(known), 3) if known else None,
               "soak_seconds": soak_seconds, "soak_rps": soak["rps"],
               "false_failovers": false_failovers}
        log(f"  interval {interval} s, timeout {timeout} s: crash outage median "
            f"{row['outage_median_s']} s {outages}, {false_failovers} false failovers in "
            f"{soak_seconds} s of full load ({soak['rps']} req/s)")
        results.append(row)
    return results


def report(results):
    lines = []
    cpu = results.get("cpu")
    if cpu:
        lines += ["| channel | controller CPU, agents on | minus agents off | heartbeats/s |",
                  "|---|---|---|---|"]
        for channel in ("udp", "http"):
            lines.append(f"| {channel.upper()} | {cpu[channel]['cpu_pct']:.2f} % | "
                         f"**{cpu[channel + '_cost_pct']:.2f} %** | "
                         f"{cpu[channel]['beats_per_s']} ({cpu[channel]['udp_beats_per_s']} "
                         f"over UDP) |")
        lines.append(f"| (agents off) | {cpu['off']['cpu_pct']:.2f} % | | |")
        lines.append("")
    rows = results.get("intervals")
    if rows:
        lines += ["| interval / timeout | crash outage, median (runs) | false failovers, "
                  "60 s full load | req/s |", "|---|---|---|---|"]
        for row in rows:
            runs = ", ".join("n/a" if o is None else f"{o:.3f}" for o in row["outages_s"])
            lines.append(f"| {row['interval_s']} / {row['timeout_s']} s | "
                         f"{row['outage_median_s']} s ({runs}) | {row['false_failovers']} | "
                         f"{row['soak_rps']} |")
    return "\n".join(lines)


def parse_settings(text):
    try:
        pairs = [tuple(float(x) for x in item.split(":")) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INTERVAL:TIMEOUT,..., got {text!r}") \
            from None
    if not pairs or any(len(p) != 2 or not 0 < p[0] < p[1] for p in pairs):
        raise argparse.ArgumentTypeError("each pair needs 0 < INTERVAL < TIMEOUT")
    return pairs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=bf.positive_int, default=60)
    parser.add_argument("--settings", type=parse_settings, default=parse_settings(SETTINGS))
    parser.add_argument("--runs", type=bf.positive_int, default=5)
    parser.add_argument("--soak-seconds", type=bf.positive_int, default=60)
    parser.add_argument("--only", choices=("cpu", "intervals"), action="append")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mininet.log import setLogLevel

    setLogLevel("warning")
    parts = set(args.only or ("cpu", "intervals"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rundir = os.path.join("/tmp", f"sbft-bench-heartbeats-{stamp}")
    os.makedirs(rundir)
    results = {"date": stamp, "command": " ".join(sys.argv)}
    os.makedirs(os.path.join(topo.REPO, "results"), exist_ok=True)
    out = os.path.join(topo.REPO, "results", f"heartbeats-{stamp}.json")

    def save():
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)

    if "cpu" in parts:
        log(f"controller CPU for liveness, {args.seconds} s per phase")
        results["cpu"] = cpu_part(args.seconds, os.path.join(rundir, "cpu"))
        save()
    if "intervals" in parts:
        log(f"heartbeat settings: {args.runs} crashes and {args.soak_seconds} s of full load "
            "each")
        results["intervals"] = interval_part(args.settings, args.runs, args.soak_seconds,
                                             os.path.join(rundir, "intervals"))
        save()
    print()
    print(report(results))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
