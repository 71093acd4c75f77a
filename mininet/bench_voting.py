#!/usr/bin/python3
"""Benchmarks (not tests) of Byzantine output voting, against active mode without voting
measured in the same run, on the same Mininet hosts and the same OVS userspace switch.

    ./run.sh bench                                        # every benchmark (bench_failover too)
    .venv/bin/python mininet/bench_voting.py --runs 5 --only exclusion

* Exclusion: a client sends one GET every 20 ms (new connection each, 1 s deadline, response
  heads logged). A replica's HAProxy is restarted configured to alter its responses (an added
  header), first a backup's, then, after the operator readmits it repaired, the primary's. The
  time is from the first request sent after the liar's restart to the moment REST shows it
  ``byzantine`` (polled every 10 ms). Altered responses a client received are counted.
* Latency: an open-loop client at 100 requests/s (new connection each), so that queueing at
  saturation does not hide what the vote adds: p50 and p99 with voting and without.
* Throughput: wrk -t2 -c16, keep-alive and a new connection per request, interleaved rounds of
  active mode with and without voting.

Writes results/bench-voting-<time>.json, docs/voting.png and prints the Markdown tables
docs/benchmarks.md quotes.
"""

import argparse
import json
import os
import statistics
import sys
import time

from sbft_lab import timeline
from sbft_lab.lab import Lab, http_json, topo, wait_until

# the one sys.path shim: bench_failover is this script's sibling (a script, not a module of an
# installed package), and this reuses its throughput runs and argument checks
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_failover  # noqa: E402

REPO = topo.REPO

CLIENT = "c1"
CONFIGS = {
    "active mode": dict(agents=True, sbft_extra="mode = active\n"),
    "active mode + voting": dict(agents=True, voting=True),
}


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _state(lab, name):
    return next(r["state"] for r in lab.health()["replicas"] if r["name"] == name)


def _exclude(lab, liar, log_path):
    """Make ``liar`` lie; seconds from the first request sent after the lying proxy began
    to start to ``byzantine`` (None: not excluded). The clock starts before the reload:
    the lying process serves while the old one finishes, so after it would be too late."""
    armed = time.monotonic()
    lab.host(liar).set_tamper(True)
    seen = None
    deadline = armed + 10.0
    while time.monotonic() < deadline:
        if _state(lab, liar) == "byzantine":
            seen = time.monotonic()
            break
        time.sleep(0.01)
    time.sleep(0.3)  # the pacer logs the requests around it
    records, _ = timeline.load(log_path)
    after = [r["t"] for r in records if r["t"] >= armed]
    if seen is None or not after:
        return None
    return round(seen - min(after), 3)


def _altered(records):
    return sum(1 for r in records if "X-Tampered" in r.get("head", ""))


def exclusion_runs(runs, rundir):
    results = []
    for run in range(runs):
        with Lab(rundir=os.path.join(rundir, f"ex{run}"), agents=True,
                           voting=True) as lab:
            proc, path = lab.pacer(CLIENT, "liar.jsonl", interval=0.02, timeout=1.0,
                                   duration=30.0, heads=True)
            time.sleep(1.0)
            backup_s = _exclude(lab, "lb2", path)
            lab.host("lb2").set_tamper(False)
            http_json(lab.api + "/sbft/replicas/lb2/readmit", data=b"{}")
            wait_until(lambda: lab.health()["voting"]["voted"], 10, 0.05,
                                 "lb2 readmitted")
            time.sleep(1.0)
            primary_s = _exclude(lab, lab.health()["primary"], path)
            time.sleep(0.5)
            proc.terminate()
            proc.wait(timeout=10)
            records, _ = timeline.load(path)
            entry = {"backup_s": backup_s, "primary_s": primary_s, "requests": len(records),
                     "altered_received": _altered(records),
                     "failed": sum(1 for r in records if not r["ok"])}
            results.append(entry)
            log(f"  run {run + 1}: liar backup excluded in {entry['backup_s']} s, liar primary "
                f"in {entry['primary_s']} s; {entry['altered_received']} altered responses "
                f"of {entry['requests']}, {entry['failed']} failed")
    return results


def latency_runs(rounds, rundir, count=1000, interval=0.01):
    results = {name: [] for name in CONFIGS}
    for round_ in range(rounds):
        for name, options in CONFIGS.items():
            label = name.replace(" ", "_").replace("+", "plus")
            with Lab(rundir=os.path.join(rundir, f"lat-{label}-{round_}"),
                               **options) as lab:
                proc, path = lab.pacer(CLIENT, "lat.jsonl", interval=interval, timeout=2.0,
                                       duration=count * interval + 5, count=count)
                proc.wait(timeout=count * interval + 30)
                records, _ = timeline.load(path)
                ok = sorted(r["latency"] for r in records if r["ok"])
                entry = {"requests": len(records), "ok": len(ok),
                         "p50_ms": round(1000 * ok[len(ok) // 2], 3) if ok else None,
                         "p99_ms": round(1000 * ok[int(len(ok) * 0.99)], 3) if ok else None}
                results[name].append(entry)
                log(f"  {name:22} round {round_ + 1}: p50 {entry['p50_ms']} ms, p99 "
                    f"{entry['p99_ms']} ms ({entry['ok']}/{entry['requests']} ok)")
    return results


def report(results):
    lines = []
    exclusion = results.get("exclusion")
    if exclusion:
        backup = [r["backup_s"] for r in exclusion if r["backup_s"] is not None]
        primary = [r["primary_s"] for r in exclusion if r["primary_s"] is not None]
        lines += ["| liar | runs | time to byzantine, median (s) | max (s) | altered responses "
                  "received |", "|---|---|---|---|---|"]
        altered = sum(r["altered_received"] for r in exclusion)
        for label, values in (("backup", backup), ("primary", primary)):
            lines.append(f"| {label} | {len(values)}/{len(exclusion)} | "
                         f"{statistics.median(values):.3f} | {max(values):.3f} | "
                         f"{altered} of {sum(r['requests'] for r in exclusion)} (both) |"
                         if values else f"| {label} | 0/{len(exclusion)} | - | - | - |")
        lines.append("")
    latency = results.get("latency")
    if latency:
        lines += ["| 100 req/s, new connection each | p50 (ms) | p99 (ms) |", "|---|---|---|"]
        medians = {}
        for name, runs in latency.items():
            p50 = statistics.median(r["p50_ms"] for r in runs)
            p99 = statistics.median(r["p99_ms"] for r in runs)
            medians[name] = (p50, p99)
            lines.append(f"| {name} | {p50:.2f} | {p99:.2f} |")
        (a50, a99), (v50, v99) = medians["active mode"], medians["active mode + voting"]
        lines.append(f"\nvoting adds {v50 - a50:+.2f} ms at p50, {v99 - a99:+.2f} ms at p99")
        lines.append("")
    throughput = results.get("throughput")
    if throughput:
        lines += ["| wrk -t2 -c16 | mode | req/s (median) | p99 (ms) | x active mode |",
                  "|---|---|---|---|---|"]
        for mode in ("keep-alive", "close"):
            base = statistics.median(r["rps"] for r in throughput["active mode"][mode])
            for name, modes in throughput.items():
                rps = statistics.median(r["rps"] for r in modes[mode])
                p99 = statistics.median(r["p99_ms"] for r in modes[mode])
                lines.append(f"| {name} | {mode} | {rps:.0f} | {p99:.2f} | {rps / base:.2f} |")
    return "\n".join(lines)


def plot(results, docs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [key for key in ("exclusion", "latency", "throughput") if results.get(key)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, key in zip(axes, panels):
        if key == "exclusion":
            data = [[r[k] for r in results[key] if r[k] is not None]
                    for k in ("backup_s", "primary_s")]
            ax.boxplot(data)
            ax.set_xticks([1, 2], ["liar backup", "liar primary"])
            ax.axhline(0.5, color="tab:red", linestyle="--", linewidth=0.8)
            ax.text(0.55, 0.5, " target 0.5 s", color="tab:red", fontsize=8, va="bottom")
            ax.set_ylabel("seconds to byzantine")
            ax.set_ylim(bottom=0)
            ax.set_title("Exclusion of a liar")
        elif key == "latency":
            names = list(results[key])
            for i, name in enumerate(names):
                runs = results[key][name]
                ax.bar([i - 0.2], [statistics.median(r["p50_ms"] for r in runs)], 0.4,
                       color="tab:blue", label="p50" if i == 0 else None)
                ax.bar([i + 0.2], [statistics.median(r["p99_ms"] for r in runs)], 0.4,
                       color="tab:orange", label="p99" if i == 0 else None)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, fontsize=8)
            ax.set_ylabel("ms (100 req/s, open loop)")
            ax.legend(fontsize=8)
            ax.set_title("Latency")
        else:
            names = list(results[key])
            for offset, mode in ((-0.2, "keep-alive"), (0.2, "close")):
                values = [statistics.median(r["rps"] for r in results[key][n][mode])
                          for n in names]
                ax.bar([i + offset for i in range(len(names))], values, 0.4, label=mode)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, fontsize=8)
            ax.set_ylabel("requests/s (wrk -t2 -c16)")
            ax.legend(fontsize=8)
            ax.set_title("Throughput")
    fig.tight_layout()
    fig.savefig(os.path.join(docs, "voting.png"), dpi=110)


def parse_args(argv=None):
    """The options, every one checked (and the plot's folder created) before any work."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=bench_failover.positive_int, default=5,
                        help="exclusion runs (fresh lab each)")
    parser.add_argument("--rounds", type=bench_failover.positive_int, default=3,
                        help="latency and throughput rounds per configuration")
    parser.add_argument("--wrk-seconds", type=bench_failover.positive_int, default=10)
    parser.add_argument("--only", choices=("exclusion", "latency", "throughput"),
                        action="append", help="run only these parts (repeatable)")
    parser.add_argument("--docs", default=os.path.join(REPO, "docs"),
                        help="folder for the plot (created if missing)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (Mininet): run ./run.sh bench as root")
    bench_failover.prepare_docs_dir(parser, args.docs)
    return args


def main(argv=None):
    args = parse_args(argv)
    from mininet.log import setLogLevel

    setLogLevel("warning")
    parts = set(args.only or ("exclusion", "latency", "throughput"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rundir = os.path.join("/tmp", f"sbft-bench-voting-{stamp}")
    os.makedirs(rundir)
    results = {"date": stamp, "command": " ".join(sys.argv)}
    if "exclusion" in parts:
        log(f"exclusion of a liar, {args.runs} runs")
        results["exclusion"] = exclusion_runs(args.runs, rundir)
    if "latency" in parts:
        log(f"latency at 100 req/s, {args.rounds} rounds")
        results["latency"] = latency_runs(args.rounds, rundir)
    if "throughput" in parts:
        log(f"throughput, {args.rounds} x {args.wrk_seconds} s per configuration and mode")
        results["throughput"] = bench_failover.throughput_runs(args.wrk_seconds, args.rounds,
                                                               rundir, CONFIGS)
    os.makedirs(os.path.join(REPO, "results"), exist_ok=True)
    out = os.path.join(REPO, "results", f"bench-voting-{stamp}.json")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    plot(results, args.docs)
    print()
    print(report(results))
    print(f"\nresults: {out}; plot: {os.path.join(args.docs, 'voting.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
