#!/usr/bin/python3
"""Benchmarks (not tests): failover outage and throughput of sbft_ryu against baselines measured
in the same run, on the same Mininet hosts and the same OVS userspace switch.

    ./run.sh bench              # this, then bench_voting.py and bench_uploads.py (about 30 min)
    .venv/bin/python mininet/bench_failover.py --runs 5 --only failover

* Failover: a client sends one GET every 20 ms, each on a new TCP connection with a 100 ms
  deadline (open loop). The outage is the time from the completion of the last success sent
  before the fault to the completion of the first success sent after it; failed requests are
  counted in between. Faults: crash (SIGKILL of the primary's agent and HAProxy; for VRRP, of
  keepalived and HAProxy) and link cut (the primary's switch link down). Systems: sbft_ryu at
  its default settings, keepalived with the default ``advert_int 1`` (VRRPv2) and keepalived
  tuned to VRRPv3 ``advert_int 0.1``; the switch runs plain learning (NORMAL) for keepalived.
* Throughput: wrk -t2 -c16 against VIP:5555 with fast static-response backends, keep-alive and
  a new connection per request: one bare HAProxy (no mirroring), the sbft tier with agents off
  (mirroring and the switch's reply filter alone), with agents on (kernel verdict cache), and
  with the verdict cached per connection (conntrack) and with every reply verdicted in
  userspace (``--verdict-cache connection`` / ``none``).
* Survival: 50 concurrent paced downloads (256 KiB at 32 KiB/s) open at the moment of the
  fault; the fraction that completes byte for byte, and the client's longest stall among them:
  sbft active mode, sbft passive mode, keepalived VRRPv3 ``advert_int 0.1``. After a link cut
  the old primary heals with a fresh HAProxy (its stale sessions would flush a burst into the
  next run).
* Soak: a 60 s full-load wrk run against the sbft tier at default settings; any change of
  primary during it is a false failover.
* Verdict cost: the agent's per-packet parse with struct versus scapy, on crafted packets.

Writes results/bench-<time>.json, docs/failover-timeline.png and docs/throughput.png, and prints
the Markdown tables docs/benchmarks.md quotes.
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import textwrap
import time

from sbft_lab import timeline
from sbft_lab.lab import Lab, http_json, topo, wait_until

REPO = topo.REPO

CLIENT = "c1"
INTERVAL = 0.02
DEADLINE = 0.1
SETTLE = 1.0  # seconds of steady traffic before each fault

SYSTEMS = {
    "sbft_ryu": dict(agents=True),
    "keepalived advert_int 1": dict(vip_mode="keepalived", advert_int=1.0, vrrp_version=2),
    "keepalived VRRPv3 advert_int 0.1": dict(vip_mode="keepalived", advert_int=0.1,
                                             vrrp_version=3),
}


def log(message):
    print(message, flush=True)


# ---- failover ---------------------------------------------------------------------------------

def current_primary(lab):
    if lab.vip_mode == "sbft":
        return lab.health()["primary"]
    holders = lab.vip_holders()
    return holders[0] if len(holders) == 1 else None


def new_primary(lab, old):
    if lab.vip_mode == "sbft":
        primary = lab.health()["primary"]
        return primary if primary not in (None, old) else None
    others = [name for name in lab.vip_holders() if name != old]
    return others[0] if others else None


def inject(lab, fault, primary):
    if fault == "crash":
        parts = ("agent", "haproxy") if lab.vip_mode == "sbft" else ("keepalived", "haproxy")
        lab.crash(primary, parts=parts)
    else:
        lab.set_link(primary, False)


def recover(lab, fault, primary):
    if fault == "link":
        # The cut-off proxy still holds the last run's sessions: healed as they are, their
        # backends flush seconds of paced data into it in one burst that stalled the next
        # run's connections by 0.3-1.6 s before its fault. A fresh proxy starts clean.
        lab.crash(primary, parts=("haproxy",))
        lab.restart(primary)
        if lab.vip_mode == "sbft" and lab.topo_args["agents"]:
            # heal only once its agent's probe has seen the new proxy: a probe failure
            # reported after the link is back would take the replica out of the mirror
            # group again for a moment, and the next run's connections would miss it
            time.sleep(0.5)
            wait_until(lambda: _service_ok(lab, primary), 10, 0.05,
                                 f"{primary}'s probe of its new proxy")
        lab.set_link(primary, True)
    if lab.vip_mode == "keepalived":
        host = lab.host(primary)
        host.cmd(f"ip addr del {topo.VIP}/24 dev {primary}-eth0 2>/dev/null")
    lab.restart(primary)
    if lab.vip_mode == "sbft":
        wait_until(lambda: lab.health()["status"] == "ok", 20, 0.05, "recovery")
    else:
        wait_until(lambda: len(lab.vip_holders()) == 1, 20, 0.05, "one VRRP master")
        time.sleep(3 * lab.topo_args["advert_int"] + 0.5)  # let the rejoined backup settle


def _service_ok(lab, name):
    return next(r for r in lab.health()["replicas"] if r["name"] == name)["service_ok"]


def failover_runs(name, options, runs, rundir):
    results = {"crash": [], "link": []}
    expected = 4.5 if options.get("advert_int", 0) >= 1 else 1.0
    with Lab(rundir=rundir, **options) as lab:
        for fault in ("crash", "link"):
            for run in range(runs):
                primary = current_primary(lab)
                proc, path = lab.pacer(CLIENT, f"{fault}-{run}.jsonl", interval=INTERVAL,
                                       timeout=DEADLINE, duration=SETTLE + expected + 1.0)
                time.sleep(SETTLE)
                fault_at = time.monotonic()
                inject(lab, fault, primary)
                try:
                    successor = wait_until(lambda: new_primary(lab, primary), 20,
                                                     0.01, f"{name}: a new primary")
                except TimeoutError as exc:  # reported as a failed run, not a crash
                    proc.wait(timeout=60)
                    results[fault].append({"outage_s": None, "failed": None,
                                           "recovered": False, "from": primary, "to": None,
                                           "timeline": [], "error": str(exc)})
                    log(f"  {name:34} {fault:5} run {run + 1}: {exc}")
                    break
                proc.wait(timeout=60)
                records, _ = timeline.load(path)
                outage = timeline.outage(records, fault_at)
                results[fault].append({
                    "outage_s": outage.seconds, "failed": outage.failed,
                    "recovered": outage.recovered, "from": primary, "to": successor,
                    "timeline": [(round(r["t"] - fault_at, 4), r["ok"]) for r in records],
                })
                log(f"  {name:34} {fault:5} run {run + 1}: outage "
                    f"{_fmt(outage.seconds)} s, {outage.failed} failed ({primary} -> "
                    f"{successor})")
                recover(lab, fault, primary)
    return results


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def summarize(runs):
    outages = [r["outage_s"] for r in runs if r["outage_s"] is not None]
    failed = [r["failed"] for r in runs if r["failed"] is not None]
    return {
        "median_s": statistics.median(outages) if outages else None,
        "max_s": max(outages) if outages else None,
        "failed_median": statistics.median(failed) if failed else None,
        "failed_max": max(failed) if failed else None,
        "unrecovered": sum(1 for r in runs if not r["recovered"]),
    }


# ---- throughput -------------------------------------------------------------------------------

THROUGHPUT = {
    "one bare HAProxy": dict(lbs=1, vip_mode="static"),
    "sbft, agents off": dict(agents=False, sbft_extra="heartbeat_timeout = 0\n"),
    "sbft, agents on": dict(agents=True),
    "sbft active mode": dict(agents=True, sbft_extra="mode = active\n"),
    "sbft, agents on, per-connection cache": dict(agents=True, agent_args=(
        "--verdict-cache", "connection")),
    "sbft, agents on, no verdict cache": dict(agents=True, agent_args=(
        "--verdict-cache", "none")),
}


def wrk(lab, seconds, close):
    header = "-H 'Connection: close' " if close else ""
    out = lab.host(CLIENT).cmd(
        f"wrk -t2 -c16 -d{seconds}s --latency --timeout 2s {header}"
        f"http://{topo.VIP}:{topo.SERVICE_PORT}/bench")
    rps = p99 = None
    errors = 0
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif parts[:1] == ["99%"]:
            p99 = _ms(parts[1])
        elif "Non-2xx" in line or "Socket errors" in line:
            errors += sum(int(x.strip(",")) for x in parts if x.strip(",").isdigit())
    return {"rps": rps, "p99_ms": p99, "errors": errors}


def _ms(text):
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * factor
    return None


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# every packet an agent handled in userspace, passive (verdict) or active (translator) mode
PACKET_COUNTERS = ("accepted", "dropped", "rst_dropped", "malformed", "translated_in",
                   "translated_out", "dropped_backup", "passed_unknown_in", "unknown_out",
                   "held", "hold_overflow")


def agent_sample(lab):
    """(cpu seconds, userspace verdicts) of the primary's agent, or None without agents."""
    if lab.vip_mode != "sbft" or not lab.topo_args["agents"]:
        return None
    health = lab.health()
    primary = health["primary"]
    counters = next(r for r in health["replicas"] if r["name"] == primary)["counters"]
    verdicts = sum(counters.get(key, 0) for key in PACKET_COUNTERS)
    return primary, cpu_seconds(lab.host(primary).owned["agent"].pid), verdicts


def agent_idle_cpu(lab, seconds=2.0):
    """CPU seconds per second the primary's agent spends with no traffic (heartbeats, probe)."""
    first = agent_sample(lab)
    if first is None:
        return 0.0
    time.sleep(seconds)
    second = agent_sample(lab)
    return (second[1] - first[1]) / seconds


def throughput_runs(seconds, rounds, rundir, configs=None):
    """Rounds are interleaved (every configuration once per round, each in a fresh lab), so a
    drift of the shared machine's speed spreads over all of them instead of favouring one."""
    configs = configs or THROUGHPUT
    results = {name: {"keep-alive": [], "close": []} for name in configs}
    for round_ in range(rounds):
        for name, options in configs.items():
            label = name.replace(" ", "_").replace(",", "")
            with Lab(rundir=os.path.join(rundir, f"{label}-{round_}"),
                               **options) as lab:
                lab.host(CLIENT).cmd(f"wrk -t1 -c2 -d1s http://{topo.VIP}:5555/warm")
                idle_cpu_per_s = agent_idle_cpu(lab)
                for mode in ("keep-alive", "close"):
                    before = agent_sample(lab)
                    ryu_before = cpu_seconds(lab.ryu.pid) if lab.ryu else None
                    start = time.monotonic()
                    result = wrk(lab, seconds, mode == "close")
                    if ryu_before is not None:  # heartbeats are the controller's load here
                        result["controller_cpu_pct"] = round(
                            100 * (cpu_seconds(lab.ryu.pid) - ryu_before)
                            / (time.monotonic() - start), 1)
                    time.sleep(1.1)  # agent counters reach the controller every heartbeat
                    after = agent_sample(lab)
                    elapsed = time.monotonic() - start
                    if before and after and before[0] == after[0]:
                        verdicts = after[2] - before[2]
                        cpu = after[1] - before[1]
                        # per verdict: what the agent spent beyond its idle heartbeats/probes
                        busy = max(cpu - idle_cpu_per_s * elapsed, 0.0)
                        result["agent_cpu_s"] = round(cpu, 3)
                        result["agent_idle_cpu_pct"] = round(idle_cpu_per_s * 100, 2)
                        result["agent_verdicts"] = verdicts
                        result["agent_verdicts_per_s"] = round(verdicts / elapsed, 1)
                        result["agent_us_per_verdict"] = (round(busy / verdicts * 1e6, 2)
                                                          if verdicts > 1000 else None)
                    results[name][mode].append(result)
                    log(f"  {name:34} {mode:10} {result['rps']} req/s, p99 "
                        f"{result['p99_ms']} ms, controller "
                        f"{result.get('controller_cpu_pct')} % CPU"
                        + (f", primary's agent {result.get('agent_verdicts')} verdicts, "
                           f"{result.get('agent_cpu_s')} s CPU (idle "
                           f"{result.get('agent_idle_cpu_pct')} %)"
                           if "agent_cpu_s" in result else ""))
    return results


SURVIVAL = {
    "sbft active": dict(agents=True, skew=True, sbft_extra="mode = active\n"),
    "sbft passive": dict(agents=True),
    "keepalived VRRPv3 advert_int 0.1": dict(vip_mode="keepalived", advert_int=0.1,
                                             vrrp_version=3),
}
# 50 concurrent downloads of 256 KiB at 32 KiB/s each (8 s), written in 2 KiB pieces: enough
# load to matter, not so much that the 2 shared cores saturate and every stall is queueing
SURVIVAL_CONNECTIONS = 50
SURVIVAL_SIZE = 256 * 1024
SURVIVAL_RATE = 32 * 1024
SURVIVAL_PIECE = 2048


def survival_runs(runs, rundir):
    """Connections open at the moment of the fault: the fraction that complete intact, and
    the client's longest stall among them."""
    from sbft_lab import stream_backend

    results = {}
    for i, (name, options) in enumerate(SURVIVAL.items()):
        results[name] = {"crash": [], "link": []}
        with Lab(rundir=os.path.join(rundir, f"sv{i}"), **options) as lab:
            for fault in ("crash", "link"):
                for run in range(runs):
                    primary = current_primary(lab)
                    path = (f"/stream/{SURVIVAL_SIZE}?rate={SURVIVAL_RATE}"
                            f"&piece={SURVIVAL_PIECE}&r={fault}{run}")
                    expected = hashlib.sha256(stream_backend.content(
                        path.split("?")[0], SURVIVAL_SIZE)).hexdigest()
                    proc, out = lab.fetch(CLIENT, f"sv-{fault}-{run}.json", path,
                                          count=SURVIVAL_CONNECTIONS, timeout=30)
                    time.sleep(2.0)
                    fault_at = time.monotonic()
                    inject(lab, fault, primary)
                    try:
                        wait_until(lambda: new_primary(lab, primary), 20, 0.01,
                                             f"{name}: a new primary")
                    except TimeoutError as exc:  # reported as a failed run, not a crash
                        proc.wait(timeout=90)
                        results[name][fault].append({"in_flight": SURVIVAL_CONNECTIONS,
                                                     "intact": 0, "survived": 0.0,
                                                     "longest_stall_s": None,
                                                     "error": str(exc)})
                        log(f"  {name:34} {fault:5} run {run + 1}: {exc}")
                        break
                    proc.wait(timeout=90)
                    with open(out, encoding="utf-8") as handle:
                        fetched = json.load(handle)["results"]
                    in_flight = [r for r in fetched if r["finished"] > fault_at]
                    intact = [r for r in in_flight if r["ok"] and r["sha256"] == expected]
                    stalls = [r["max_stall_s"] for r in intact if r["max_stall_s"] is not None]
                    entry = {"in_flight": len(in_flight), "intact": len(intact),
                             "survived": len(intact) / len(in_flight) if in_flight else None,
                             "longest_stall_s": max(stalls) if stalls else None}
                    results[name][fault].append(entry)
                    log(f"  {name:34} {fault:5} run {run + 1}: {entry['intact']}/"
                        f"{entry['in_flight']} in-flight connections intact, longest stall "
                        f"{_fmt(entry['longest_stall_s'])} s")
                    recover(lab, fault, primary)
    return results


def report_survival(survival):
    lines = ["| system | fault | in-flight connections completed intact | longest stall "
             "(median of runs / max, s) |", "|---|---|---|---|"]
    for system, faults in survival.items():
        for fault, runs in faults.items():
            intact = sum(r["intact"] for r in runs)
            total = sum(r["in_flight"] for r in runs)
            stalls = [r["longest_stall_s"] for r in runs if r["longest_stall_s"] is not None]
            stall = (f"{statistics.median(stalls):.3f} / {max(stalls):.3f}" if stalls else "-")
            lines.append(f"| {system} | {fault} | {intact}/{total} "
                         f"({100 * intact / total if total else 0:.0f} %) | {stall} |")
    return "\n".join(lines)


def soak(seconds, rundir):
    with Lab(rundir=rundir, agents=True) as lab:
        before = lab.health()
        start = time.monotonic()
        result = wrk(lab, seconds, close=False)
        after = lab.health()
        elapsed = time.monotonic() - start
        events = lab.api + "/sbft/events"
        changes = [e for e in http_json(events)["events"] if e["age_s"] <= elapsed]
        return {"seconds": seconds, "rps": result["rps"], "p99_ms": result["p99_ms"],
                "epoch_before": before["epoch"], "epoch_after": after["epoch"],
                "false_failovers": after["epoch"] - before["epoch"],
                "transitions": changes}


# ---- verdict cost -------------------------------------------------------------------------

def verdict_cost(count=200000):
    from scapy.all import IP, TCP

    from sbft_ryu.agent import verdict

    packets = [bytes(IP(src="10.0.0.100", dst="10.0.0.31") /
                     TCP(sport=5555, dport=40000 + i % 1000, flags="PA", seq=i) /
                     (b"x" * (i % 200))) for i in range(1000)]

    def timed(function, n):
        start = time.perf_counter()
        for i in range(n):
            function(packets[i % 1000])
        return (time.perf_counter() - start) / n * 1e6

    struct_us = timed(lambda p: verdict.reply_verdict(p, False), count)
    scapy_us = timed(lambda p: IP(p)[TCP].flags, count // 50)
    return {"struct_us_per_packet": round(struct_us, 3), "scapy_us_per_packet":
            round(scapy_us, 2), "struct_packets_per_s": round(1e6 / struct_us),
            "scapy_packets_per_s": round(1e6 / scapy_us),
            "active_translator_us_per_packet": round(translator_cost(count // 4), 2)}


def translator_cost(pairs):
    """The active-mode translator alone (no NFQUEUE, no kernel): µs per packet over one
    connection's data segments out (1448 bytes, timestamps) and the client's ACKs in."""
    import socket

    from scapy.all import IP, TCP

    from sbft_ryu.agent.active import Translator

    client, vip, cport, own_isn, client_isn = "10.0.0.31", "10.0.0.100", 40000, 12345, 1000
    translator = Translator(b"bench-secret-0123", 5555)
    syn = IP(src=client, dst=vip) / TCP(sport=cport, dport=5555, flags="S", seq=client_isn,
                                        options=[("MSS", 1460), ("Timestamp", (7, 0))])
    translator.process(bytes(syn), None, True, 0.0, True)
    synack = IP(src=vip, dst=client) / TCP(sport=5555, dport=cport, flags="SA", seq=own_isn,
                                           ack=client_isn + 1,
                                           options=[("MSS", 1460), ("Timestamp", (5, 7))])
    translator.process(bytes(synack), None, True, 0.0, False)
    conn = translator.connections[(socket.inet_aton(client), cport)]
    shared = (conn.shared_isn + 1) & 0xFFFFFFFF
    outs, ins = [], []
    pairs = min(pairs, 5000)
    for i in range(pairs):
        outs.append(bytes(IP(src=vip, dst=client) / TCP(
            sport=5555, dport=cport, flags="PA", seq=own_isn + 1 + i * 1448,
            ack=client_isn + 1, options=[("NOP", None), ("NOP", None),
                                         ("Timestamp", (5 + i, 7 + i))]) / (b"x" * 1448)))
        ins.append(bytes(IP(src=client, dst=vip) / TCP(
            sport=cport, dport=5555, flags="A", seq=client_isn + 1,
            ack=(shared + (i + 1) * 1448) & 0xFFFFFFFF,
            options=[("NOP", None), ("NOP", None), ("Timestamp", (8 + i, 5 + i))])))
    start = time.perf_counter()
    for i in range(pairs):
        translator.process(outs[i], None, True, 1.0, False)
        translator.process(ins[i], None, True, 1.0, True)
    return (time.perf_counter() - start) / (2 * pairs) * 1e6


# ---- report ---------------------------------------------------------------------------------

def report_failover(failover):
    lines = ["| system | fault | outage median (s) | outage max (s) | failed requests "
             "median / max |", "|---|---|---|---|---|"]
    for system, faults in failover.items():
        for fault, runs in faults.items():
            s = summarize(runs)
            errors = sum(1 for r in runs if r.get("error"))
            lines.append(f"| {system} | {fault} | {_fmt(s['median_s'])} | {_fmt(s['max_s'])} "
                         f"| {s['failed_median']} / {s['failed_max']} |"
                         + (f" ({errors} run(s) found no new primary)" if errors else ""))
    sbft = summarize(failover.get("sbft_ryu", {}).get("crash", []))["median_s"]
    tuned = summarize(failover.get("keepalived VRRPv3 advert_int 0.1", {}).get("crash", []))
    if sbft and tuned["median_s"]:
        lines.append(f"\nsbft_ryu crash outage / tuned keepalived crash outage: "
                     f"{sbft / tuned['median_s']:.2f}x")
    return "\n".join(lines)


def report_throughput(throughput):
    base = {mode: statistics.median(r["rps"] for r in throughput["one bare HAProxy"][mode])
            for mode in ("keep-alive", "close")} if "one bare HAProxy" in throughput else {}
    off = {mode: statistics.median(r["rps"] for r in throughput["sbft, agents off"][mode])
           for mode in ("keep-alive", "close")} if "sbft, agents off" in throughput else {}
    lines = ["| configuration | mode | req/s (median) | p99 (ms) | x bare HAProxy | "
             "x agents off | agent µs/verdict | controller CPU (% of a core) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, modes in throughput.items():
        for mode in ("keep-alive", "close"):
            runs = modes[mode]
            rps = statistics.median(r["rps"] for r in runs)
            p99 = statistics.median(r["p99_ms"] for r in runs)
            us = [r["agent_us_per_verdict"] for r in runs if r.get("agent_us_per_verdict")]
            ctl = [r["controller_cpu_pct"] for r in runs
                   if r.get("controller_cpu_pct") is not None]
            lines.append(f"| {name} | {mode} | {rps:.0f} | {p99:.2f} | "
                         f"{rps / base[mode]:.2f} | "
                         f"{(rps / off[mode]) if off else float('nan'):.2f} | "
                         f"{statistics.median(us) if us else '-'} | "
                         f"{statistics.median(ctl) if ctl else '-'} |")
    if "sbft active mode" in throughput and "sbft, agents on" in throughput:
        ratios = []
        for mode in ("keep-alive", "close"):
            act = statistics.median(r["rps"] for r in throughput["sbft active mode"][mode])
            pas = statistics.median(r["rps"] for r in throughput["sbft, agents on"][mode])
            ratios.append(f"{mode} {act / pas:.2f}x")
        lines.append("\nactive mode / passive mode (agents on): " + ", ".join(ratios))
    return "\n".join(lines)


def _median_run(runs):
    """The run whose outage is the median (runs without one sort last)."""
    ordered = sorted(runs, key=lambda r: (r["outage_s"] is None, r["outage_s"] or 0.0))
    return ordered[(len([r for r in runs if r["outage_s"] is not None]) - 1) // 2]


def plot(failover, throughput, docs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if failover:
        rows = [(system, fault, _median_run(runs)) for system, faults in failover.items()
                for fault, runs in faults.items() if runs]
        fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.1 * len(rows) + 1), sharex=True)
        for ax, (system, fault, run) in zip(axes, rows):
            ok = [t for t, good in run["timeline"] if good]
            bad = [t for t, good in run["timeline"] if not good]
            ax.scatter(ok, [1] * len(ok), s=8, color="tab:green", marker="|")
            ax.scatter(bad, [1] * len(bad), s=14, color="tab:red", marker="x")
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_yticks([])
            ax.set_ylabel(f"{system}\n{fault}", rotation=0, ha="right", va="center",
                          fontsize=8)
            ax.text(1.0, 0.5, f" outage {_fmt(run['outage_s'])} s", transform=ax.transAxes,
                    fontsize=8, va="center")
        axes[-1].set_xlim(-0.5, 5.0)
        axes[-1].set_xlabel("request send time relative to the fault (s); "
                            "green: answered, red: failed (100 ms deadline)")
        fig.suptitle("Client's view of a failover (one GET every 20 ms, median run)")
        fig.tight_layout()
        fig.savefig(os.path.join(docs, "failover-timeline.png"), dpi=110)
    if throughput:
        names = list(throughput)
        fig, ax = plt.subplots(figsize=(9, 3.6))
        width = 0.38
        for offset, mode in ((-width / 2, "keep-alive"), (width / 2, "close")):
            values = [statistics.median(r["rps"] for r in throughput[n][mode]) for n in names]
            ax.bar([i + offset for i in range(len(names))], values, width, label=mode)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([textwrap.fill(n, 18) for n in names], fontsize=8)
        ax.set_ylabel("requests/s (wrk -t2 -c16)")
        ax.legend()
        ax.set_title("Throughput through the OVS userspace switch (2 shared cores)")
        fig.tight_layout()
        fig.savefig(os.path.join(docs, "throughput.png"), dpi=110)


def positive_int(text):
    """argparse type: a count or a duration in whole units, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def prepare_docs_dir(parser, path):
    """Check, and create if missing, the folder the plots go to: before any measuring, so a
    bad ``--docs`` stops the benchmark at once instead of after its minutes of work."""
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"--docs {path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        parser.error(f"--docs {path}: cannot create the folder ({exc.strerror})")
    if not os.access(path, os.W_OK | os.X_OK):
        parser.error(f"--docs {path}: the folder is not writable")
    try:
        import matplotlib  # noqa: F401  (the plots are drawn last: missing, fail first)
    except ImportError:
        parser.error("matplotlib is missing (the bench extra: ./run.sh setup installs it)")
    return path


def parse_args(argv=None):
    """The options, every one checked (and the plots' folder created) before any work."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=positive_int, default=5, help="failover runs per fault")
    parser.add_argument("--wrk-seconds", type=positive_int, default=10)
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="wrk runs per configuration")
    parser.add_argument("--soak-seconds", type=positive_int, default=60)
    parser.add_argument("--survival-runs", type=positive_int, default=3)
    parser.add_argument("--only", choices=("failover", "survival", "throughput", "soak",
                                           "verdict"),
                        action="append", help="run only these parts (repeatable)")
    parser.add_argument("--docs", default=os.path.join(REPO, "docs"),
                        help="folder for the plots (created if missing)")
    parser.add_argument("--replot", metavar="RESULTS_JSON",
                        help="only redraw the plots and tables from a results file")
    args = parser.parse_args(argv)
    if args.replot and not os.path.isfile(args.replot):
        parser.error(f"--replot {args.replot}: no such file")
    if not args.replot and os.geteuid() != 0:
        parser.error("needs root (Mininet): run ./run.sh bench as root")
    prepare_docs_dir(parser, args.docs)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        with open(args.replot, encoding="utf-8") as handle:
            saved = json.load(handle)
        plot(saved.get("failover"), saved.get("throughput"), args.docs)
        for key, report in (("failover", report_failover), ("survival", report_survival),
                            ("throughput", report_throughput)):
            if key in saved:
                print(report(saved[key]) + "\n")
        return 0
    from mininet.log import setLogLevel

    setLogLevel("warning")
    parts = set(args.only or ("failover", "survival", "throughput", "soak", "verdict"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rundir = os.path.join("/tmp", f"sbft-bench-{stamp}")
    os.makedirs(rundir)
    results = {"date": stamp, "command": " ".join(sys.argv)}
    os.makedirs(os.path.join(REPO, "results"), exist_ok=True)
    out = os.path.join(REPO, "results", f"bench-{stamp}.json")

    def save():  # after every part: a later part's failure keeps what was measured
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)

    if "verdict" in parts:
        log("verdict cost (struct vs scapy)")
        results["verdict"] = verdict_cost()
        save()
        log(f"  {results['verdict']}")
    if "failover" in parts:
        log(f"failover, {args.runs} runs per fault")
        results["failover"] = {name: failover_runs(name, options, args.runs,
                                                   os.path.join(rundir, f"fo{i}"))
                               for i, (name, options) in enumerate(SYSTEMS.items())}
        save()
    if "survival" in parts:
        log(f"in-flight connection survival, {args.survival_runs} runs per fault")
        results["survival"] = survival_runs(args.survival_runs, rundir)
        save()
    if "throughput" in parts:
        log(f"throughput, {args.rounds} x {args.wrk_seconds} s per configuration and mode")
        results["throughput"] = throughput_runs(args.wrk_seconds, args.rounds, rundir)
        save()
    if "soak" in parts:
        log(f"soak: {args.soak_seconds} s of full load")
        results["soak"] = soak(args.soak_seconds, os.path.join(rundir, "soak"))
        save()
        log(f"  {results['soak']}")
    plot(results.get("failover"), results.get("throughput"), args.docs)
    print()
    if "failover" in results:
        print(report_failover(results["failover"]))
        print()
    if "survival" in results:
        print(report_survival(results["survival"]))
        print()
    if "throughput" in results:
        print(report_throughput(results["throughput"]))
        print()
    print(f"results: {out}; plots in {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
