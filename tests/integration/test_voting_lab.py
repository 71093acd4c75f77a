"""Byzantine output voting in Mininet: three replicas in active mode compare their output;
a replica that answers wrongly is caught, never reaches a client, and is cut off.

Lying is injected for real: a proxy configured to alter its responses (an added header), and,
for what a proxy cannot do, an agent started with a test-only ``--fault`` (a compromised host
sending altered bytes past its own agent; a backup accusing falsely or forging reports)."""

import hashlib
import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest

from sbft_lab import stream_backend, timeline

ALLOWED_S = 2.0  # the bound for an exclusion; the benchmark measures it


def _replica(lab, name):
    return next(r for r in lab.health()["replicas"] if r["name"] == name)


def _post(lab, path, body=b"{}"):
    request = urllib.request.Request(lab.api + path, data=body, method="POST",
                                      headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _altered(records):
    return [r for r in records if "X-Tampered" in r.get("head", "")
            or r.get("body", "").startswith("XX")]


RESET_COUNTERS = ("unvotable_resets", "unsure_resets", "stale_generation_resets",
                  "outvoted_resets", "input_lost_resets", "resets_sent", "vote_timeouts",
                  "abstentions_received", "abstentions_unclaimed", "hold_expired")


def _failures(lab, records, since):
    """What a failed request assertion shows: the failures (seconds after ``since``, error,
    latency) and the replicas' counters that explain a reset or a timeout."""
    failed = [(r["seq"], round(r["t"] - since, 3), r.get("error"), r.get("latency"))
              for r in records if not r["ok"]]
    counters = {r["name"]: {k: v for k, v in r.get("counters", {}).items()
                            if k in RESET_COUNTERS and v}
                for r in lab.health()["replicas"]}
    return f"failed after the exclusion (seq, s after it, error, latency): {failed[:5]}; " \
        f"counters: {counters}"


@pytest.fixture
def voting_lab(lab_factory):
    def start(**kwargs):
        lab = lab_factory(agents=True, skew=True, voting=True, **kwargs)
        health = lab.health()
        assert health["voting"]["voted"] and health["primary"] == "lb1", health["voting"]
        return lab
    return start


def test_a_lying_proxy_is_excluded_as_backup_then_as_primary(voting_lab, topo_module):
    lab = voting_lab()
    proc, log = lab.pacer("c1", "liar.jsonl", interval=0.02, timeout=1.0, duration=10.0,
                          heads=True)
    time.sleep(1.0)
    lab.host("lb2").set_tamper(True)  # a backup answers wrongly
    started = time.monotonic()
    topo_module.wait_until(lambda: _replica(lab, "lb2")["state"] == "byzantine", ALLOWED_S,
                           0.01, "lb2 marked byzantine")
    backup_s = time.monotonic() - started
    health = lab.health()
    assert "lb2" not in health["members"] and _replica(lab, "lb2")["role"] == "none"
    assert _replica(lab, "lb2")["votes"]["divergences"] > 0
    assert _post(lab, "/sbft/replicas/lb3/readmit")[0] == 409  # not byzantine

    lab.host("lb2").set_tamper(False)  # the operator repairs it and readmits it
    code, body = _post(lab, "/sbft/replicas/lb2/readmit")
    assert code == 200 and body["state"] in ("up", "down"), body
    topo_module.wait_until(lambda: lab.health()["voting"]["voted"], 10, 0.05,
                           "lb2 back and votes counted")
    assert _replica(lab, "lb2")["role"] == "backup"

    lab.host("lb1").set_tamper(True)  # now the primary answers wrongly
    started = time.monotonic()
    topo_module.wait_until(lambda: _replica(lab, "lb1")["state"] == "byzantine", ALLOWED_S,
                           0.01, "lb1 marked byzantine")
    primary_s = time.monotonic() - started
    assert lab.health()["primary"] in ("lb2", "lb3")
    # convicted while primary, by the vote (not failed over for some other reason first)
    events = topo_module.http_json(lab.api + "/sbft/events")["events"]
    lb1_changes = [e["change"] for e in events if e["replica"] == "lb1"]  # newest first
    assert lb1_changes[0].startswith("byzantine") and lb1_changes[1] == "primary", lb1_changes
    proc.wait(timeout=30)
    records, _ = timeline.load(log)
    assert _altered(records) == [], "no client receives an altered byte"
    fault_end = started + primary_s + 1.0
    late = [r for r in records if r["t"] > fault_end]
    assert late and all(r["ok"] for r in late), _failures(lab, late, started + primary_s)
    print(f"exclusion: backup liar {backup_s:.3f} s, primary liar {primary_s:.3f} s")


def test_a_host_bypassing_its_agent_is_caught_on_the_wire(voting_lab, topo_module):
    """lb1's host sends altered bytes past its own agent (test fault, armed by SIGUSR1, on
    connections that begin after it): the backups see the switch's copies differ, lb1 is
    excluded, the tainted connections are reset and never completed, the others continue
    intact on the new primary."""
    lab = voting_lab(faults={"lb1": "tamper-wire"})
    size = 2 * 1024 * 1024
    honest_path = f"/stream/{size}?rate={512 * 1024}&piece=4096&t=honest"
    tainted_path = f"/stream/{size}?rate={512 * 1024}&piece=4096&t=tainted"
    honest, honest_out = lab.fetch("c1", "honest.json", honest_path, count=4, timeout=60)
    time.sleep(1.0)
    os.kill(lab.host("lb1").owned["agent"].pid, signal.SIGUSR1)
    tainted, tainted_out = lab.fetch("c1", "tainted.json", tainted_path, count=4, timeout=60)
    topo_module.wait_until(lambda: _replica(lab, "lb1")["state"] == "byzantine", ALLOWED_S,
                           0.01, "lb1 caught by the wire check")
    assert _replica(lab, "lb1")["votes"]["wire_divergences"] >= 1
    results = {}
    for proc, out, path in ((honest, honest_out, honest_path),
                            (tainted, tainted_out, tainted_path)):
        proc.wait(timeout=90)
        with open(out, encoding="utf-8") as handle:
            results[path] = json.load(handle)["results"]
    for path, fetched in results.items():
        expected = hashlib.sha256(stream_backend.content(path.split("?")[0], size)).hexdigest()
        for result in fetched:
            if result["ok"]:
                assert result["sha256"] == expected, "never spliced: complete means intact"
    assert all(r["ok"] for r in results[honest_path]), "the other connections continue: " + \
        json.dumps({"fetched": results[honest_path], "counters": _vote_counters(lab)})
    assert not any(r["ok"] for r in results[tainted_path]), "tainted connections are reset"
    assert all(r["error"] == "ConnectionResetError" for r in results[tainted_path]), \
        results[tainted_path][:2]
    new_primary = lab.health()["primary"]
    assert _replica(lab, new_primary)["counters"].get("resets_sent", 0) >= 4


def _vote_counters(lab):
    """Each replica's non-zero agent counters about voting and resets (for failure messages)."""
    names = ("claims", "votes_cast", "released_voted", "vote_timeouts", "abstentions",
             "abstentions_received", "range_abstentions", "released_delivered", "range_drops",
             "unvotable_resets", "stale_generation_resets", "unsure_connections",
             "unsure_resets", "resets_sent", "caught_up", "claims_unanswerable",
             "wire_divergent", "unacked_overflow")
    return {r["name"]: {n: r["counters"][n] for n in names if r["counters"].get(n)}
            for r in lab.health()["replicas"]}


@pytest.mark.parametrize("fault", ["false-accuse", "forge-reports"])
def test_false_accusations_and_forgeries_exclude_nobody(voting_lab, fault):
    lab = voting_lab(faults={"lb2": fault})
    # a forged heartbeat in lb3's name (no key) changes nothing either
    before = _replica(lab, "lb3")["heartbeats"]
    code, body = _post(lab, "/sbft/replicas/lb3/heartbeat", json.dumps(
        {"seq": 10 ** 6, "service_ok": False, "counters": {}, "nonce": "guess",
         "mac": "00" * 16}).encode())
    assert code == 401 and "nonce" in body
    proc, log = lab.pacer("c1", "accuse.jsonl", interval=0.02, timeout=1.0, duration=3.0)
    proc.wait(timeout=30)
    records, _ = timeline.load(log)
    assert all(r["ok"] for r in records), [r for r in records if not r["ok"]][:3]
    health = lab.health()
    assert [r["state"] for r in health["replicas"]] == ["up", "up", "up"]
    assert health["primary"] == "lb1"
    lb2 = _replica(lab, "lb2")["votes"]
    if fault == "forge-reports":
        assert lb2["reports_rejected"] > 0
    else:
        assert lb2["reports_verified"] > 0  # heard, but no majority agrees with it
    assert _replica(lab, "lb3")["votes"]["unauthenticated_heartbeats"] >= 1
    assert _replica(lab, "lb3")["heartbeats"] > before


def test_ten_thousand_requests_with_honest_nondeterminism_exclude_nobody(voting_lab):
    """The backends add a Date header (second resolution), so replicas occasionally produce
    different bytes (a second boundary between their requests): the decaying suspicion must
    exclude nobody."""
    lab = voting_lab(backend_date=True)
    proc, log = lab.pacer("c1", "honest.jsonl", interval=0.004, timeout=3.0, count=10000,
                          duration=120.0)
    proc.wait(timeout=180)
    records, summary = timeline.load(log)
    assert len(records) == 10000
    health = lab.health()
    assert [r["state"] for r in health["replicas"]] == ["up", "up", "up"], health["replicas"]
    ok = sum(r["ok"] for r in records)
    assert ok >= 0.99 * len(records), summary
    divergences = sum(r["votes"]["divergences"] for r in health["replicas"])
    print(f"10000 requests: {ok} ok, {divergences} divergent ranges judged, nobody excluded")
    for replica in health["replicas"]:
        votes = replica["votes"]
        print(f"  {replica['name']}: divergences {votes['divergences']} suspicion "
              f"{votes['suspicion']} rate {votes['divergence_rate']} of "
              f"{votes['compared_recently']} ranges")


def test_with_one_replica_down_replies_are_still_voted_and_service_continues(voting_lab,
                                                                           topo_module):
    """f + 1 of 2f + 1 members up still vote: the primary releases on the one backup's vote."""
    lab = voting_lab()
    lab.crash("lb3")
    topo_module.wait_until(lambda: _replica(lab, "lb3")["state"] == "down", 5, 0.05,
                           "lb3 down")
    health = lab.health()
    voting = health["voting"]
    assert voting["voted"] and not voting["convicts"], voting
    assert "cannot be convicted" in voting["reason"] and health["primary"] == "lb1"
    before = _replica(lab, "lb1")["counters"]
    assert all(lab.curl("c1", f"/p/{n}")[0] == 200 for n in range(10))
    after = {}

    def counted():
        after.update(_replica(lab, "lb1")["counters"])
        return after.get("released_voted", 0) > before.get("released_voted", 0)
    topo_module.wait_until(counted, 5, 0.05, "voted releases counted in a heartbeat")
    assert after.get("released_unvoted", 0) == before.get("released_unvoted", 0) == 0, after


def test_unvoted_stop_policy_stops_serving_below_f_plus_1(voting_lab, topo_module):
    lab = voting_lab(sbft_extra="unvoted = stop\n")
    lab.crash("lb3")
    topo_module.wait_until(lambda: _replica(lab, "lb3")["state"] == "down", 5, 0.05,
                           "lb3 down")
    assert lab.health()["primary"] == "lb1"  # f + 1 up: still voted, still serving
    lab.crash("lb2")
    topo_module.wait_until(lambda: lab.health()["primary"] is None, 5, 0.05, "stopped")
    assert lab.health()["status"] == "down"
    assert lab.curl("c1", "/p/1", timeout=1.0)[0] == 0
    lab.restart("lb3")
    topo_module.wait_until(lambda: lab.health()["voting"]["voted"], 10, 0.05, "voted again")
    assert lab.curl("c1", "/p/2")[0] == 200
