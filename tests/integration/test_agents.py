"""NFQUEUE agents on the replicas: heartbeats decide liveness and roles, only the primary's
replies leave its host, and failover follows a crash, a link cut or a dead agent.

Timing is never asserted beyond generous bounds: the benchmark (mininet/bench_failover.py)
measures outages; these tests check outcomes."""

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from sbft_lab import timeline

BODY = re.compile(r"^b[12] /p/\d+\n$")


def _wait_done(proc, timeout):
    proc.wait(timeout=timeout)


def _records(path):
    records, summary = timeline.load(path)
    assert summary is not None, "the pacer did not finish"
    return records


@pytest.mark.parametrize("cache", ["role", "connection", "none"])
def test_steady_state_every_response_exactly_once(lab_factory, topo_module, cache):
    lab = lab_factory(agents=True, agent_args=("--verdict-cache", cache))
    synacks = lab.count_replies("c1")
    replies = lab.count_replies("c1", syn_ack_only=False)
    proc, log = lab.pacer("c1", "steady.jsonl", interval=0.02, timeout=1.0, count=100)
    _wait_done(proc, 30)
    records = _records(log)
    assert len(records) == 100
    assert all(r["ok"] and BODY.match(r["body"]) for r in records), \
        [r for r in records if not r["ok"]][:3]
    assert synacks() == 100, "one SYN-ACK per connection: no backup ever answered"
    replicas = {r["name"]: r for r in lab.health()["replicas"]}
    assert replicas["lb1"]["role"] == "primary"
    # every reply packet is at least a SYN-ACK, the response (with the FIN, when the proxy
    # closes at once) and the ACK of the client's FIN; the ACK of the request rides on the
    # response when the proxy answers within the delayed-ACK time, so 3 to 4 per connection
    received = replies()
    assert received >= 300
    # the agent's counters reach the controller with its next heartbeat: on a loaded machine
    # the last connection's replies can still be on their way when the pacer is done
    floor = {"none": received, "connection": 100, "role": 0}[cache]
    topo_module.wait_until(
        lambda: lab.health()["replicas"][0]["counters"]["accepted"] >= floor, 5, 0.05,
        "the primary's userspace verdicts to reach the controller")
    userspace = lab.health()["replicas"][0]["counters"]["accepted"]
    if cache == "none":
        assert userspace >= received  # every reply packet the client got was verdicted
    if cache == "connection":
        assert 100 <= userspace < 200  # the first reply of each connection
    if cache == "role":
        assert userspace < 10  # only what raced a role change
    # kernel counters reach the heartbeats every few seconds; passive mode: a backup discards
    # the mirrored traffic at its door
    topo_module.wait_until(
        lambda: all(r["counters"]["ingress_dropped"] >= 100 for r in lab.health()["replicas"][1:])
        and (cache == "none" or lab.health()["replicas"][0]["counters"]["kernel_accepted"] >= 200),
        12, 0.2, "the kernel counters")
    replicas = {r["name"]: r for r in lab.health()["replicas"]}
    for name in ("lb2", "lb3"):
        assert replicas[name]["counters"]["accepted"] == 0
        assert replicas[name]["service_ok"] is True
        assert replicas[name]["last_heartbeat_age_s"] < 1.0


def test_primary_crash_fails_over_and_recovered_replica_rejoins_as_backup(lab_factory,
                                                                           topo_module):
    lab = lab_factory(agents=True)
    proc, log = lab.pacer("c1", "crash.jsonl", interval=0.02, timeout=0.5, duration=4.0)
    time.sleep(1.0)
    fault_at = time.monotonic()
    lab.crash("lb1")
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 5, 0.02, "failover")
    _wait_done(proc, 30)
    records = _records(log)
    outage = timeline.outage(records, fault_at)
    assert outage.recovered
    assert all(r["ok"] for r in records if r["t"] > fault_at + 2.0), "service came back"
    health = lab.health()
    lb1 = health["replicas"][0]
    assert (health["primary"], health["epoch"], health["status"]) == ("lb2", 2, "degraded")
    assert (lb1["state"], lb1["role"], lb1["down_reason"]) == ("down", "none",
                                                               "heartbeat silence")
    assert lb1["last_heartbeat_age_s"] > 0.15

    lab.restart("lb1")
    topo_module.wait_until(lambda: lab.health()["status"] == "ok", 10, 0.05, "lb1 rejoins")
    health = lab.health()
    assert (health["primary"], health["epoch"]) == ("lb2", 2)
    assert [r["role"] for r in health["replicas"]] == ["backup", "primary", "backup"]
    assert all(lab.curl("c1", f"/p/{n}")[0] == 200 for n in range(5))


def test_primary_link_cut_fails_over(lab_factory, topo_module):
    lab = lab_factory(agents=True)
    capture = lab.start_capture("c1", "tcp src port 5555 and tcp[tcpflags] & tcp-syn != 0")
    proc, log = lab.pacer("c1", "cut.jsonl", interval=0.02, timeout=0.5, duration=3.0)
    time.sleep(1.0)
    fault_at = time.monotonic()
    lab.set_link("lb1", False)
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 5, 0.02, "failover")
    _wait_done(proc, 30)
    records = _records(log)
    assert timeline.outage(records, fault_at).recovered
    assert all(r["ok"] for r in records if r["t"] > fault_at + 1.0)
    answers = _one_replica_answers_each(lab, capture)
    assert len(answers) >= sum(1 for r in records if r["ok"])
    lb1 = lab.health()["replicas"][0]
    assert (lb1["state"], lb1["role"], lb1["link_up"]) == ("down", "none", False)
    lab.set_link("lb1", True)
    topo_module.wait_until(lambda: lab.health()["status"] == "ok", 10, 0.05, "lb1 rejoins")
    assert lab.health()["replicas"][0]["role"] == "backup"


def test_backup_with_dead_agent_never_leaks_a_reply(lab_factory, topo_module):
    """With liveness from port state only, the switch keeps mirroring to lb2 after its agent
    dies. To show the egress filter alone holds, the test also opens lb2's door (the agent's
    ingress DROP), so lb2's HAProxy answers every SYN: nothing may reach the wire."""
    lab = lab_factory(agents=True, sbft_extra="heartbeat_timeout = 0\n")
    topo_module.wait_until(lambda: all(r["epoch"] for r in lab.health()["replicas"]), 10,
                           0.05, "every agent to learn its role")
    lab.crash("lb2", parts=("agent",))
    assert "haproxy" in lab.host("lb2").owned, "lb2's proxy keeps running"
    syn_rule = lab.host("lb2")
    assert "-A sbft-in -j DROP" in syn_rule.cmd("iptables-save -t raw"), "closed door stays"
    syn_rule.cmd("iptables -t raw -F sbft-in")
    syn_rule.cmd("iptables -t raw -I PREROUTING -p tcp --dport 5555 --syn")
    syn_rule.cmd("iptables -t mangle -I POSTROUTING -p tcp --sport 5555 ! -o lo")  # tries
    proc, log = lab.pacer("c1", "leak.jsonl", interval=0.02, timeout=1.0, duration=3.0)
    leaked = lab.capture("lb2", "tcp src port 5555", 3)
    _wait_done(proc, 30)
    records = _records(log)
    syns_seen = int(syn_rule.cmd("iptables -t raw -L PREROUTING 1 -v -x -n").split()[0])
    assert syns_seen >= len(records) > 50, "lb2 kept receiving every client SYN"
    assert leaked == [], "lb2's replies must die on its own host"
    assert all(r["ok"] for r in records)
    tried = int(syn_rule.cmd("iptables -t mangle -L POSTROUTING 1 -v -x -n").split()[0])
    assert tried >= len(records), "lb2's stack did answer; its host dropped every reply"


def test_primary_with_dead_agent_is_replaced_and_no_reply_is_duplicated(lab_factory,
                                                                        topo_module):
    """A primary whose agent dies may fail open on its host; heartbeat silence moves the
    primary role and the switch's reply filter drops whatever the old primary still sends."""
    lab = lab_factory(agents=True)
    capture = lab.start_capture("c1", "tcp src port 5555 and tcp[tcpflags] & tcp-syn != 0")
    proc, log = lab.pacer("c1", "agent.jsonl", interval=0.02, timeout=0.5, duration=3.0)
    time.sleep(0.8)
    fault_at = time.monotonic()
    lab.crash("lb1", parts=("agent",))
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 5, 0.02, "failover")
    _wait_done(proc, 30)
    records = _records(log)
    assert all(r["ok"] for r in records if r["t"] > fault_at + 1.0)
    answers = _one_replica_answers_each(lab, capture)
    assert len(answers) >= sum(1 for r in records if r["ok"])
    assert lab.health()["replicas"][0]["down_reason"] == "heartbeat silence"


def test_agent_removes_exactly_its_rules(lab_factory, topo_module):
    lab = lab_factory(agents=True)
    host = lab.host("lb3")
    host.cmd("iptables -t mangle -A POSTROUTING -p udp --dport 9 -j ACCEPT")  # the operator's
    lab.host("lb3").kill("agent", sig=15)
    after_stop = host.cmd("iptables-save -t mangle") + host.cmd("iptables-save -t raw")
    assert "sbft" not in after_stop and "--dport 9" in after_stop
    topo_module.wait_until(lambda: lab.health()["replicas"][2]["state"] == "down", 5, 0.05,
                           "lb3 down after its agent stopped")
    lab.restart("lb3")
    topo_module.wait_until(lambda: lab.health()["status"] == "ok", 10, 0.05, "lb3 back")
    running = host.cmd("iptables-save -t mangle") + host.cmd("iptables-save -t raw")
    assert running.count("-j sbft-out") == 1 and running.count("-j sbft-in") == 1
    assert "--dport 9" in running
    agent_log = open(f"{host.rundir}/agent.log").read()
    assert "stopped: counters" in agent_log and "Traceback" not in agent_log


def test_bad_heartbeats_get_json_4xx_and_change_nothing(lab):
    url = lab.api + "/sbft/replicas/{}/heartbeat"
    before = lab.health()["replicas"]
    cases = [("lb1", b"{not json"), ("lb1", b'{"seq": -1, "service_ok": true}'),
             ("lb1", b'{"seq": 1, "service_ok": "yes"}'),
             ("lb1", b'{"seq": 1, "service_ok": true, "counters": {"x": -2}}'),
             ("lb1", b'{"seq": 1, "service_ok": true, "extra": 1}'),
             ("nobody", b'{"seq": 1, "service_ok": true}')]
    for name, body in cases:
        request = urllib.request.Request(url.format(name), data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError(f"accepted {body!r}")
        except urllib.error.HTTPError as exc:
            error = json.loads(exc.read())["error"]
            assert exc.code == error["code"] and exc.code in (400, 404), (body, exc.code)
    after = lab.health()["replicas"]
    assert [(r["heartbeats"], r["seq"] if "seq" in r else None, r["state"]) for r in after] \
        == [(r["heartbeats"], r["seq"] if "seq" in r else None, r["state"]) for r in before]


def _one_replica_answers_each(lab, capture):
    """Client SYNs answered, each by one replica: a second replica's SYN-ACK to the same SYN
    carries another ISN (a loop here once saw two, 31 µs apart: the new primary opened its door
    before the switch dropped the old one's replies). Keyed by client port and the SYN
    answered: a client port that comes round again is another connection."""
    answers = lab.connections_answering(lab.stop_capture("c1", capture))
    doubled = {key: seqs for key, seqs in answers.items() if len(seqs) > 1}
    assert not doubled, f"SYNs answered by two replicas (client port, ack): {doubled}"
    return answers
