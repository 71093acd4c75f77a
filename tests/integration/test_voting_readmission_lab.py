"""A readmitted replica starts clean (issue 9, section 2): the voting demo's sequence (a backup
lies, is convicted, repaired and readmitted; then the primary) five times in one lab, with 3
replicas and with 5. No replica is convicted again once repaired (none within 10 s of its
readmission, none at all while honest), each readmitted replica casts votes on connections
opened after its readmission, and no client receives an altered byte."""

import time

import pytest

from sbft_lab import timeline
from sbft_lab.demo import lie_until_readmitted, replica_state

CYCLES = 5
CLEAN_S = 10.0  # a readmitted replica must not be convicted again within this


def _altered(records):
    return [r for r in records if "X-Tampered" in r.get("head", "")]


@pytest.mark.parametrize("lbs", [3, 5])
def test_a_readmitted_replica_is_never_convicted_again_and_votes_on_new_connections(
        lab_factory, topo_module, lbs):
    lab = lab_factory(lbs=lbs, agents=True, skew=True, voting=True)
    assert lab.health()["voting"]["voted"] and lab.health()["primary"] == "lb1"
    lying = set()
    wrongly_convicted = []

    def watch():
        """Every poll of the demo's waits: a replica convicted while honest is a failure."""
        for replica in lab.health()["replicas"]:
            if replica["state"] == "byzantine" and replica["name"] not in lying:
                wrongly_convicted.append((replica["name"], time.monotonic()))

    def votes_cast(name):
        return replica_state(lab, name)["counters"].get("votes_cast", 0)

    for cycle in range(CYCLES):
        proc, log = lab.pacer("c1", f"cycle{cycle}.jsonl", interval=0.02, timeout=1.0,
                              duration=40.0, heads=True)
        time.sleep(0.5)
        health = lab.health()
        backup = next(name for name in health["members"] if name != health["primary"])
        readmitted = {}
        for liar in (backup, lab.health()["primary"]):
            lying.add(liar)
            at = lie_until_readmitted(lab, liar, out=print, watch=watch)
            lying.discard(liar)
            readmitted[liar] = (at, votes_cast(liar))
        quiet_until = max(at for at, _ in readmitted.values()) + CLEAN_S
        while time.monotonic() < quiet_until:  # bounded: CLEAN_S after the last readmission
            watch()
            time.sleep(0.2)
        watch()
        proc.terminate()
        proc.wait(timeout=10)
        records, _ = timeline.load(log)
        assert _altered(records) == [], f"cycle {cycle}: an altered byte reached the client"
        assert wrongly_convicted == [], f"cycle {cycle}: {wrongly_convicted}"
        checked = 0
        for name, (_, before) in readmitted.items():
            state = replica_state(lab, name)
            assert state["state"] == "up" and name in lab.health()["members"], state
            if state["role"] == "backup":  # (a primary claims rather than votes)
                assert votes_cast(name) > before, f"cycle {cycle}: {name} cast no vote since"
                checked += 1
        assert checked, f"cycle {cycle}: no readmitted replica is a backup to vote"
        answered = sum(r["ok"] for r in records)
        print(f"{lbs} replicas, cycle {cycle}: liars {list(readmitted)}, {len(records)} "
              f"requests, {answered} answered, 0 altered")
    assert lab.health()["voting"]["voted"]
