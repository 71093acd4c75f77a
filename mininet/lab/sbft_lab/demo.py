"""The runnable lab: a Mininet network with its own ``ryu-manager`` (or yours), the scripted
demos, the Mininet CLI.

    python -m sbft_lab --demo [--mode passive|active|voting]
    python -m sbft_lab [--lbs N] [--backends M] [--clients K] [--controller HOST:PORT] [--cli]
    python -m sbft_lab --controllers 2|3 [--cli]   (one leader elected through etcd)

(as root, with the project's virtual environment: ``.venv/bin/python -m sbft_lab ...``).
"""

import argparse
import hashlib
import json
import os
import time

from mininet.log import setLogLevel

from sbft_lab import stream_backend, timeline
from sbft_lab.lab import Lab, http_json, wait_until


def demo(lab, out=print):
    """The scripted demo: steady requests, a primary crash, recovery, a primary link cut.

    A paced client (one GET every 20 ms, each on a new connection, 100 ms deadline) runs
    through every step; the demo prints its request log around each fault and the health JSON
    before and after."""
    def show_health(title):
        health = lab.health()
        out(f"\n--- {title}: GET /sbft/health")
        brief = {key: health[key] for key in ("status", "primary", "epoch")}
        brief["replicas"] = [
            {key: r[key] for key in ("name", "state", "role", "last_heartbeat_age_s",
                                     "service_ok", "down_reason")}
            for r in health["replicas"]]
        out(json.dumps(brief, indent=1))

    def request_log(path, fault_at, title):
        records, _ = timeline.load(path)
        outage = timeline.outage(records, fault_at)
        out(f"\n--- client request log around the {title} (t relative to the fault)")
        shown = [r for r in records if fault_at - 0.08 <= r["t"] <= fault_at + 0.5]
        failed_run = 0
        for record in shown:
            if not record["ok"]:
                failed_run += 1
                if failed_run > 3:
                    continue
            elif failed_run > 3:
                out(f"      ... {failed_run - 3} more failed")
            if record["ok"]:
                failed_run = 0
            result = (record.get("body", "").strip() if record["ok"]
                      else f"FAILED ({record.get('error', record['status'])})")
            out(f"    {record['t'] - fault_at:+7.3f}s  GET /p/{record['seq']:<4} "
                f"{record['latency'] * 1000:6.1f} ms  {result}")
        ok = sum(r["ok"] for r in records)
        out(f"    {len(records)} requests, {ok} ok; outage {outage.seconds or 0:.3f} s, "
            f"{outage.failed} failed requests")

    def fault(title, action, primary):
        proc, path = lab.pacer("c1", f"demo-{title.replace(' ', '-')}.jsonl",
                               interval=0.02, timeout=0.1, duration=2.5)
        time.sleep(1.0)
        fault_at = time.monotonic()
        out(f"\n=== {title}: {primary}")
        action()
        wait_until(lambda: lab.health()["primary"] not in (None, primary), 10, 0.02,
                   "a new primary")
        proc.wait(timeout=30)
        request_log(path, fault_at, title)

    show_health("health at start")
    first = lab.health()["primary"]
    fault("primary crash (agent and HAProxy SIGKILLed)", lambda: lab.crash(first), first)
    show_health("health after the crash")
    out(f"\n=== restarting {first}'s HAProxy and agent")
    lab.restart(first)
    wait_until(lambda: lab.health()["status"] == "ok", 10, 0.05, "all replicas up")
    show_health(f"health after recovery ({first} rejoins as backup: the primary is sticky)")
    second = lab.health()["primary"]
    fault("primary link cut", lambda: lab.set_link(second, False), second)
    show_health("health after the link cut")
    lab.set_link(second, True)
    wait_until(lambda: lab.health()["status"] == "ok", 10, 0.05, "all replicas up")
    show_health("health after the link is restored")


def demo_active(lab, out=print):
    """Active mode: a download in flight survives the primary's crash, byte for byte."""
    size, rate = 3 * 1024 * 1024, 1024 * 1024
    path = f"/stream/{size}?rate={rate}"
    expected = hashlib.sha256(stream_backend.content(path.split("?")[0], size)).hexdigest()
    primary = lab.health()["primary"]
    out(f"\n=== active mode: downloading {size} bytes at {rate} bytes/s through the VIP; "
        f"the primary {primary} is SIGKILLed 1.2 s in")
    proc, result = lab.fetch("c1", "demo-download.json", path)
    time.sleep(1.2)
    lab.crash(primary)
    wait_until(lambda: lab.health()["primary"] not in (None, primary), 10, 0.02, "failover")
    out(f"    failover: primary {lab.health()['primary']}, epoch {lab.health()['epoch']}")
    proc.wait(timeout=60)
    with open(result, encoding="utf-8") as handle:
        fetched = json.load(handle)["results"][0]
    out(f"    download: status {fetched['status']}, {fetched['bytes']} bytes, sha256 "
        f"{'matches the object' if fetched['sha256'] == expected else 'DIFFERS'}, "
        f"longest stall {fetched['max_stall_s']} s")
    counters = {r["name"]: r["counters"] for r in lab.health()["replicas"]}
    for name, c in counters.items():
        out(f"    {name}: connections {c.get('connections')}, translated in/out "
            f"{c.get('translated_in')}/{c.get('translated_out')}, backup drops "
            f"{c.get('dropped_backup')}, ACKs clamped {c.get('ack_clamped')}")


def replica_state(lab, name):
    return next(r for r in lab.health()["replicas"] if r["name"] == name)


def lie_until_readmitted(lab, liar, out=print, watch=lambda: None):
    """One liar of the voting demo: ``liar``'s proxy alters its responses until the vote
    convicts it; the operator repairs it (the tampering HAProxy process gone, waited for by
    PID) and readmits it; returns once it is a member again: the monotonic time of the
    readmission. ``watch`` is called at every poll (a test's check of the other replicas)."""
    def polled(predicate):
        def check():
            watch()
            return predicate()
        return check

    out(f"    {liar} ({replica_state(lab, liar)['role']}) now alters its responses")
    lab.set_tamper(liar, True)
    started = time.monotonic()
    wait_until(polled(lambda: replica_state(lab, liar)["state"] == "byzantine"), 10, 0.01,
               f"{liar} byzantine")
    votes = replica_state(lab, liar)["votes"]
    health = lab.health()
    out(f"    {liar} byzantine after {time.monotonic() - started:.3f} s (divergences "
        f"{votes['divergences']}, divergence rate {votes['divergence_rate']}); primary "
        f"{health['primary']}, members {health['members']}")
    time.sleep(1.0)
    waited = lab.repair(liar)
    readmitted_at = time.monotonic()
    answer = http_json(f"{lab.api}/sbft/replicas/{liar}/readmit", data=b"{}")
    out(f"    operator repaired {liar} (its tampering HAProxy gone after {waited:.3f} s) and "
        f"readmitted it: state {answer['state']}")
    wait_until(polled(lambda: liar in lab.health()["members"]), 10, 0.05,
               f"{liar} a member again")
    return readmitted_at


def demo_voting(lab, out=print):
    """Voting: a backup's proxy, then the primary's, starts altering its responses; each is
    marked byzantine and cut off, and the client never sees an altered byte. Returns the
    number of responses with an altered byte the client received."""
    out("\n=== voting: one GET every 20 ms; replicas' proxies start to lie (an added header)")
    proc, log = lab.pacer("c1", "demo-voting.jsonl", interval=0.02, timeout=1.0,
                          duration=30.0, heads=True)
    time.sleep(1.0)
    for liar in ("lb2", lab.health()["primary"]):
        lie_until_readmitted(lab, liar, out)
        time.sleep(1.0)
    proc.terminate()
    proc.wait(timeout=10)
    records, _ = timeline.load(log)
    altered = [r for r in records if "X-Tampered" in r.get("head", "")]
    out(f"    client: {len(records)} requests, {sum(r['ok'] for r in records)} answered, "
        f"{len(altered)} with an altered byte")
    out(f"    voting: {lab.health()['voting']['reason']}")
    return len(altered)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lbs", type=int, default=3)
    parser.add_argument("--backends", type=int, default=2)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--controller", metavar="HOST:PORT",
                        help="use this running controller instead of starting ryu-manager")
    parser.add_argument("--controllers", type=int, choices=(1, 2, 3), default=1,
                        help="2 or 3: each ryu-manager in a host of its own (ctl1..), one "
                        "leader elected through a 3-member etcd cluster (hosts etcd1..3)")
    parser.add_argument("--no-agents", dest="agents", action="store_false",
                        help="run no sbft-agent (liveness from switch port state only)")
    parser.add_argument("--cli", action="store_true", help="open the Mininet CLI")
    parser.add_argument("--demo", action="store_true", help="run the scripted demo")
    parser.add_argument("--mode", choices=("passive", "active", "voting"), default="passive",
                        help="active: replicas share one TCP sequence space (their stacks "
                        "skewed as on separate machines); voting: active with Byzantine "
                        "output voting")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("Mininet needs root")
    setLogLevel("warning")
    extra = "" if args.agents else "heartbeat_timeout = 0\n"
    active = args.mode in ("active", "voting")
    if active and not args.agents:
        parser.error("active mode needs the agents")
    if args.controllers > 1 and (args.controller or args.demo):
        parser.error("--controllers runs its own controllers and has no scripted demo "
                     "(use --cli)")
    extra += "mode = active\n" if args.mode == "active" else ""
    with Lab(lbs=args.lbs, backends=args.backends, clients=args.clients, agents=args.agents,
             controller=args.controller, sbft_extra=extra, skew=active,
             voting=args.mode == "voting", controllers=args.controllers) as lab:
        if args.controllers > 1:
            print(f"controllers: {', '.join(lab.controller_urls)} (leader: {lab.leader()}); "
                  f"etcd: {lab.control['etcd'][0]['mgmt_ip']}:2379 and two more; "
                  f"run directory: {lab.rundir}")
        else:
            print(f"controller REST: {lab.api}/sbft/health   run directory: {lab.rundir}")
        if args.demo:
            {"passive": demo, "active": demo_active, "voting": demo_voting}[args.mode](lab)
        if args.cli:
            from mininet.cli import CLI
            setLogLevel("output")  # (the CLI prints the hosts' output at this level)
            CLI(lab.net)
    return 0

