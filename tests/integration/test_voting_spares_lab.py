"""Spares in Mininet: three voting members and one spare (lb4) in active mode with voting. A
convicted member's place goes to the spare at once, a crashed member's after ``spare_after``;
the promoted spare votes, so a second liar is convicted too, and no client ever receives an
altered byte."""

import time

import pytest

from sbft_lab import timeline

SPARE_AFTER_S = 2.0


def _replica(lab, name):
    return next(r for r in lab.health()["replicas"] if r["name"] == name)


def _altered(records):
    return [r for r in records if "X-Tampered" in r.get("head", "")]


@pytest.fixture
def spare_lab(lab_factory, topo_module):
    lab = lab_factory(lbs=4, agents=True, skew=True, voting=True, spares=1,
                      sbft_extra=f"spare_after = {SPARE_AFTER_S:g}\n")
    topo_module.wait_until(lambda: _replica(lab, "lb4")["state"] == "up", 20, 0.05,
                           "the spare lb4 up")
    health = lab.health()
    assert health["members"] == ["lb1", "lb2", "lb3"] and health["spares"] == ["lb4"], health
    assert health["voting"]["voted"] and health["primary"] == "lb1", health["voting"]
    assert _replica(lab, "lb4")["role"] == "none"
    return lab


def test_a_convicted_primary_is_replaced_by_the_spare_which_then_convicts_a_second_liar(
        spare_lab, topo_module):
    lab = spare_lab
    proc, log = lab.pacer("c1", "spare.jsonl", interval=0.02, timeout=1.0, duration=14.0,
                          heads=True)
    time.sleep(1.0)
    lab.host("lb1").set_tamper(True)  # the primary lies
    topo_module.wait_until(lambda: _replica(lab, "lb1")["state"] == "byzantine", 2.0, 0.01,
                           "lb1 convicted")
    topo_module.wait_until(lambda: "lb4" in lab.health()["members"], 1.0, 0.01,
                           "lb4 promoted within 1 s")
    health = lab.health()
    assert health["promotions"][0]["replica"] == "lb4"
    assert health["promotions"][0]["replacing"] == "lb1", health["promotions"]
    assert health["voting"]["convicts"] and health["spares"] == []
    log_text = lab.controller_log()
    assert "replica=lb4 promoted: replacing lb1 (convicted)" in log_text
    time.sleep(2.0)  # connections opened after the promotion
    second = next(name for name in ("lb2", "lb3") if name != lab.health()["primary"])
    lab.host(second).set_tamper(True)  # a backup lies now: lb4's vote makes the majority
    topo_module.wait_until(lambda: _replica(lab, second)["state"] == "byzantine", 4.0, 0.01,
                           f"{second} convicted")
    assert _replica(lab, "lb4")["counters"].get("votes_cast", 0) > 0
    proc.wait(timeout=40)
    records, _ = timeline.load(log)
    assert _altered(records) == [], "no client receives an altered byte"
    honest = {"lb2", "lb3", "lb4"} - {second}
    assert all(_replica(lab, name)["state"] == "up" for name in honest)


def test_a_crashed_member_is_replaced_after_spare_after(spare_lab, topo_module):
    lab = spare_lab
    lab.crash("lb3")
    topo_module.wait_until(lambda: _replica(lab, "lb3")["state"] == "down", 5, 0.05,
                           "lb3 down")
    started = time.monotonic()
    topo_module.wait_until(lambda: "lb4" in lab.health()["members"], SPARE_AFTER_S + 1.0,
                           0.02, "lb4 promoted within spare_after + 1 s")
    print(f"promoted {time.monotonic() - started:.3f} s after lb3 was seen down")
    health = lab.health()
    assert health["members"] == ["lb1", "lb2", "lb4"] and health["voting"]["convicts"]
    assert "replacing lb3 (down for 2 s)" in health["promotions"][0]["reason"]
    lab.restart("lb3")  # it comes back to a full voting set: a spare
    topo_module.wait_until(lambda: _replica(lab, "lb3")["state"] == "up", 10, 0.05,
                           "lb3 up again")
    assert _replica(lab, "lb3")["spare"] and _replica(lab, "lb3")["role"] == "none"
    assert all(lab.curl("c1", f"/p/{n}")[0] == 200 for n in range(5))
