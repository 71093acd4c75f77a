#!/usr/bin/python3
"""Benchmark (not a test): uploads through the tier, and what becomes of them at a failover.

    .venv/bin/python mininet/bench_uploads.py --uploads 20 --faults 10

* Throughput: ``--uploads`` POSTs of 4 MiB, one after another, each on its own connection, as
  fast as the client can send, through one bare HAProxy, the sbft tier in passive mode and the
  sbft tier in active mode (skewed stacks, as the tests), interleaved in ``--rounds`` rounds of
  fresh labs. Per configuration: MiB/s over all uploads (bytes / summed upload times) and the
  p50 and p99 of one upload's time. (No ACK clamp was built: see docs/design.md.)
* Outcomes: ``--faults`` uploads of 4 x tcp_rmem max in active mode with lb2 (the backup the
  configured order would promote) slowed by a token bucket, the primary SIGKILLed or its link
  cut at a third of the body, each in a fresh lab: completed (and right), reset (and how long
  after the promotion), hung; who took over; whether a survivor had every acknowledged byte.

Writes results/bench-uploads-<time>.json and prints the Markdown tables docs/benchmarks.md
quotes.
"""

import argparse
import json
import os
import statistics
import sys
import time

from sbft_lab import upload_faults
from sbft_lab.lab import Lab, topo

# the one sys.path shim: bench_failover is this script's sibling (a script, not a module)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_failover  # noqa: E402

REPO = topo.REPO
UPLOAD_SIZE = 4 << 20
CONFIGS = {
    "one bare HAProxy": dict(lbs=1, vip_mode="static"),
    "sbft passive": dict(agents=True),
    "sbft active": dict(agents=True, skew=True, sbft_extra="mode = active\n"),
}


def log(message):
    print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)


def one_upload(lab, tag, size):
    proc, out, _ = lab.upload("c1", f"{tag}.json", tag, size, stall=10, timeout=60)
    proc.wait(timeout=90)
    with open(out, encoding="utf-8") as handle:
        result = json.load(handle)
    right = (result["outcome"] == "ok" and [r["sha256"] for r in result["responses"]]
             == [e["sha256"] for e in result["expected"]])
    return result["finished"] - result["started"], right


def throughput_runs(uploads, rounds, rundir):
    """Rounds interleave the configurations (each in a fresh lab), so a drift of the shared
    machine's speed spreads over all of them."""
    times = {name: [] for name in CONFIGS}
    wrong = {name: 0 for name in CONFIGS}
    for round_ in range(rounds):
        for name, options in CONFIGS.items():
            label = name.replace(" ", "_")
            with Lab(rundir=os.path.join(rundir, f"{label}-{round_}"), **options) as lab:
                one_upload(lab, f"warm{round_}", 1 << 20)
                for i in range(uploads):
                    seconds, right = one_upload(lab, f"t{round_}-{i}", UPLOAD_SIZE)
                    times[name].append(seconds)
                    wrong[name] += not right
            log(f"  {name:18} round {round_ + 1}: median "
                f"{statistics.median(times[name]):.3f} s per 4 MiB")
    return {name: {"seconds": times[name], "wrong": wrong[name]} for name in CONFIGS}


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report_throughput(results):
    lines = ["| configuration | MiB/s | p50 per 4 MiB upload | p99 | uploads (wrong) |",
             "|---|---|---|---|---|"]
    for name, entry in results.items():
        seconds = entry["seconds"]
        rate = len(seconds) * UPLOAD_SIZE / (1 << 20) / sum(seconds)
        lines.append(f"| {name} | {rate:.1f} | {statistics.median(seconds) * 1000:.0f} ms | "
                     f"{_percentile(seconds, 0.99) * 1000:.0f} ms | {len(seconds)} "
                     f"({entry['wrong']}) |")
    return "\n".join(lines)


def outcome_runs(faults, rundir):
    size = 4 * upload_faults.rmem_max()
    runs = []
    for fault in ("crash", "link"):
        for i in range(faults):
            with Lab(rundir=os.path.join(rundir, f"{fault}-{i}"), agents=True, skew=True,
                     sbft_extra="mode = active\n") as lab:
                lab.shape("lb2")
                run = upload_faults.across_fault(lab, fault, f"{fault}{i}", size)
            result = run["result"]
            right = [r["sha256"] for r in result["responses"]] == [
                e["sha256"] for e in result["expected"]]
            entry = {"fault": fault, "outcome": result["outcome"], "right": right,
                     "primary": run["primary"], "had_all": upload_faults.had_all(run),
                     "acked": run["acked"], "received": run["received"],
                     "reset_after_promotion_s": (round(
                         result["reset_at"] - upload_faults.promoted_before(
                             run, result["reset_at"]), 3) if result["reset_at"] else None),
                     "promotions": len(run["promotions"]), "at_fault": run["at_fault"],
                     "upload_s": round(result["finished"] - result["started"], 2)}
            runs.append(entry)
            log(f"  {fault} {i + 1}: {entry['outcome']} (right: {right}), primary "
                f"{entry['primary']}, a survivor had every acknowledged byte: "
                f"{entry['had_all']}")
    return runs


def report_outcomes(runs):
    lines = ["| fault | runs | completed, right | reset (after promotion, max) | hung or other "
             "| successor | a survivor had every byte |", "|---|---|---|---|---|---|---|"]
    for fault in ("crash", "link"):
        mine = [r for r in runs if r["fault"] == fault]
        if not mine:
            continue
        done = sum(r["outcome"] == "ok" and r["right"] for r in mine)
        resets = [r["reset_after_promotion_s"] for r in mine if r["outcome"] == "reset"]
        other = len(mine) - done - len(resets)
        successors = ", ".join(f"{name} {sum(r['primary'] == name for r in mine)}"
                               for name in ("lb2", "lb3"))
        lines.append(f"| {fault} | {len(mine)} | {done} | {len(resets)}"
                     + (f" ({max(resets):.2f} s)" if resets else "") + f" | {other} | "
                     f"{successors} | {sum(r['had_all'] for r in mine)} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=bench_failover.positive_int, default=20,
                        help="4 MiB uploads per configuration and round")
    parser.add_argument("--rounds", type=bench_failover.positive_int, default=2)
    parser.add_argument("--faults", type=bench_failover.positive_int, default=10,
                        help="uploads across each fault (crash, link cut)")
    parser.add_argument("--only", choices=("throughput", "outcomes"), action="append")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (Mininet, Open vSwitch, iptables)")
    return args


def main(argv=None):
    args = parse_args(argv)
    from mininet.log import setLogLevel

    setLogLevel("warning")
    parts = set(args.only or ("throughput", "outcomes"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rundir = os.path.join("/tmp", f"sbft-bench-uploads-{stamp}")
    os.makedirs(rundir)
    results = {"date": stamp, "command": " ".join(sys.argv)}
    os.makedirs(os.path.join(REPO, "results"), exist_ok=True)
    out = os.path.join(REPO, "results", f"bench-uploads-{stamp}.json")

    def save():
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)

    if "throughput" in parts:
        log(f"upload throughput, {args.rounds} x {args.uploads} uploads of 4 MiB")
        results["throughput"] = throughput_runs(args.uploads, args.rounds, rundir)
        save()
    if "outcomes" in parts:
        log(f"uploads across {args.faults} crashes and {args.faults} link cuts, lb2 slowed")
        results["outcomes"] = outcome_runs(args.faults, rundir)
        save()
    print()
    if "throughput" in results:
        print(report_throughput(results["throughput"]) + "\n")
    if "outcomes" in results:
        print(report_outcomes(results["outcomes"]) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
