"""Active replication in Mininet: three replicas share one TCP sequence space, so a connection
survives its primary's death. The replicas' stacks are skewed (ISN and timestamp clock) as on
separate machines; TCP timestamps and SACK are on (Linux defaults).

Each download is a large deterministic object the backend streams slowly, so the fault lands
mid-transfer; the client checks the bytes against the object (sha256) and the length."""

import hashlib
import json
import signal
import time

import pytest

from sbft_lab import stream_backend

ACTIVE = "mode = active\n"
SIZE = 3 * 1024 * 1024
RATE = 1024 * 1024  # bytes per second: about 3 s per download


def _path(tag, size=SIZE, rate=RATE):
    return f"/stream/{size}?rate={rate}&t={tag}"


def _expected(path):
    return hashlib.sha256(stream_backend.content(path.split("?")[0], SIZE)).hexdigest()


def _results(proc, out, timeout=90):
    proc.wait(timeout=timeout)
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)["results"]


@pytest.fixture
def active_lab(lab_factory):
    def start(**kwargs):
        lab = lab_factory(agents=True, skew=True, sbft_extra=ACTIVE, **kwargs)
        assert lab.health()["primary"] == "lb1", "the configured order decides at start"
        return lab
    return start


def _assert_intact(results, path):
    expected = _expected(path)
    bad = [r for r in results if not (r["ok"] and r["bytes"] == SIZE
                                      and r["sha256"] == expected)]
    assert not bad, bad[:3]


def test_steady_download_through_the_shared_sequence_space(active_lab):
    lab = active_lab()
    assert lab.health()["mode"] == "active"
    path = _path("steady")
    proc, out = lab.fetch("c1", "steady.json", path)
    _assert_intact(_results(proc, out), path)
    counters = {r["name"]: r["counters"] for r in lab.health()["replicas"]}
    for name in ("lb1", "lb2", "lb3"):
        assert counters[name]["translated_in"] > 0, (name, counters[name])
    assert counters["lb1"]["translated_out"] > 0 and counters["lb2"]["dropped_backup"] > 0


@pytest.mark.parametrize("fault", ["crash", "link"])
def test_download_survives_the_primary(active_lab, topo_module, fault):
    lab = active_lab()
    path = _path(fault)
    proc, out = lab.fetch("c1", f"{fault}.json", path)
    time.sleep(1.2)  # mid-transfer
    if fault == "crash":
        lab.crash("lb1")
    else:
        lab.set_link("lb1", False)
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 5, 0.02, "failover")
    results = _results(proc, out)
    _assert_intact(results, path)


def test_fifty_connections_in_flight_all_complete(active_lab, topo_module):
    lab = active_lab()
    size = 256 * 1024
    path = f"/stream/{size}?rate={32 * 1024}&piece=2048&t=fifty"
    proc, out = lab.fetch("c1", "fifty.json", path, count=50, timeout=120)
    time.sleep(2.0)
    lab.crash("lb1")
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 5, 0.02, "failover")
    results = _results(proc, out, timeout=150)
    assert len(results) == 50
    expected = hashlib.sha256(stream_backend.content(path.split("?")[0], size)).hexdigest()
    bad = [r for r in results if not (r["ok"] and r["bytes"] == size
                                      and r["sha256"] == expected)]
    assert not bad, bad[:3]


def test_a_lagging_backup_still_takes_over(active_lab, topo_module):
    """lb2's proxy is frozen for a while, so its stream falls behind the primary's; lb3 is
    taken out first so that the laggard must be the one that takes over."""
    lab = active_lab()
    lab.crash("lb3")
    topo_module.wait_until(lambda: lab.health()["replicas"][2]["state"] == "down", 5, 0.02,
                           "lb3 down")
    path = _path("lag")
    proc, out = lab.fetch("c1", "lag.json", path)
    time.sleep(0.5)
    haproxy = lab.host("lb2").owned["haproxy"]
    haproxy.send_signal(signal.SIGSTOP)
    time.sleep(0.4)
    haproxy.send_signal(signal.SIGCONT)
    time.sleep(0.3)
    lab.crash("lb1")
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 5, 0.02, "failover")
    _assert_intact(_results(proc, out), path)


def test_a_recovered_replica_rejoins_as_backup_for_new_connections(active_lab, topo_module):
    lab = active_lab()
    lab.crash("lb1")
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 5, 0.02, "failover")
    lab.restart("lb1")
    topo_module.wait_until(lambda: lab.health()["status"] == "ok", 10, 0.05, "lb1 back")
    assert lab.health()["replicas"][0]["role"] == "backup"
    path = _path("rejoin")
    proc, out = lab.fetch("c1", "rejoin.json", path)
    time.sleep(1.0)
    lab.crash("lb2")  # lb3, up since the start, is senior to the rejoined lb1
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb3", 5, 0.02, "failover")
    time.sleep(0.5)
    lab.crash("lb3")  # now the rejoined lb1 is all that is left: it has this connection
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb1", 5, 0.02, "failover")
    _assert_intact(_results(proc, out), path)


def test_a_backup_that_rejoined_mid_download_is_passed_over(active_lab, topo_module):
    """lb2's link flaps while a download runs, so lb2 misses part of that connection; when the
    primary then dies, the successor is lb3 (up the longest), not lb2 (next in the configured
    order), and the download completes intact."""
    lab = active_lab()
    path = _path("flap")
    proc, out = lab.fetch("c1", "flap.json", path)
    time.sleep(0.5)
    lab.set_link("lb2", False)
    topo_module.wait_until(lambda: lab.health()["replicas"][1]["state"] == "down", 5, 0.02,
                           "lb2 down")
    time.sleep(0.3)
    lab.set_link("lb2", True)
    topo_module.wait_until(lambda: lab.health()["status"] == "ok", 5, 0.02, "lb2 back")
    lab.crash("lb1")
    topo_module.wait_until(lambda: lab.health()["primary"] not in ("lb1", None), 5, 0.02,
                           "failover")
    assert lab.health()["primary"] == "lb3"
    _assert_intact(_results(proc, out), path)
