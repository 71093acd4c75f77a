"""Voting with a member missing (issue 9, section 1): f + 1 members up still vote, so a lying
primary's bytes never reach a client even with a backup crashed, though it cannot be convicted
until the backup returns; with 5 replicas and one crashed, a lying backup is convicted."""

import time

from sbft_lab import timeline


def _replica(lab, name):
    return next(r for r in lab.health()["replicas"] if r["name"] == name)


def _altered(records):
    return [r for r in records if "X-Tampered" in r.get("head", "")
            or r.get("body", "").startswith("XX")]


def _voting_lab(lab_factory, topo_module, lbs, crashed):
    lab = lab_factory(lbs=lbs, agents=True, skew=True, voting=True)
    assert lab.health()["voting"]["voted"] and lab.health()["primary"] == "lb1"
    lab.crash(crashed)
    topo_module.wait_until(lambda: _replica(lab, crashed)["state"] == "down", 5, 0.05,
                           f"{crashed} down")
    assert lab.health()["voting"]["voted"], lab.health()["voting"]
    return lab


def test_a_lying_primary_with_a_backup_crashed_reaches_no_client_and_is_convicted_later(
        lab_factory, topo_module):
    lab = _voting_lab(lab_factory, topo_module, 3, "lb3")
    voting = lab.health()["voting"]
    assert not voting["convicts"] and "cannot be convicted" in voting["reason"], voting
    proc, log = lab.pacer("c1", "liar.jsonl", interval=0.05, timeout=3.0, duration=6.0,
                          heads=True)
    time.sleep(1.0)
    lab.host("lb1").set_tamper(True)
    lied_at = time.monotonic()
    proc.wait(timeout=30)
    assert _replica(lab, "lb1")["state"] == "up"  # 1 against 1: nobody can be convicted
    records, _ = timeline.load(log)
    assert _altered(records) == [], "no client receives an altered byte"
    lying = [r for r in records if r["t"] > lied_at + 0.5]
    assert lying and not any(r["ok"] for r in lying), [r for r in lying if r["ok"]][:2]
    assert all(r["latency"] < 2.0 for r in lying), max(r["latency"] for r in lying)
    assert {r.get("error") for r in lying} == {"ConnectionResetError"}, lying[:2]
    print(f"lying primary, one backup down: {len(lying)} requests reset, slowest after "
          f"{max(r['latency'] for r in lying):.3f} s, 0 altered")
    lab.restart("lb3")  # the crashed backup returns: now two honest members agree
    topo_module.wait_until(lambda: _replica(lab, "lb3")["state"] == "up", 10, 0.05, "lb3 up")
    proc, log = lab.pacer("c1", "liar2.jsonl", interval=0.05, timeout=3.0, duration=5.0,
                          heads=True)
    topo_module.wait_until(lambda: _replica(lab, "lb1")["state"] == "byzantine", 6.0, 0.02,
                           "lb1 convicted once lb3 is back")
    proc.wait(timeout=30)
    assert _altered(timeline.load(log)[0]) == []


def test_five_replicas_one_crashed_convict_a_lying_backup(lab_factory, topo_module):
    lab = _voting_lab(lab_factory, topo_module, 5, "lb5")
    assert lab.health()["voting"]["convicts"]
    proc, log = lab.pacer("c1", "liar.jsonl", interval=0.02, timeout=1.0, duration=5.0,
                          heads=True)
    time.sleep(1.0)
    lab.host("lb2").set_tamper(True)
    started = time.monotonic()
    topo_module.wait_until(lambda: _replica(lab, "lb2")["state"] == "byzantine", 1.0, 0.01,
                           "lb2 convicted within 1 s")
    print(f"lying backup convicted after {time.monotonic() - started:.3f} s")
    proc.wait(timeout=30)
    assert _altered(timeline.load(log)[0]) == []
