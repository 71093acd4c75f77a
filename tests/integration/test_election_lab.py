"""Several controllers, one leader, through a real etcd (issue 14, the controller side).

A bare Open vSwitch bridge in the root namespace (OpenFlow 1.3, three internal ports standing
for the replicas' ports), two or three real ``ryu-manager`` processes on loopback and a real
etcd cluster of one or three members on loopback (:mod:`sbft_lab.etcd`, run with a short
election timeout so that a 1 s lease is possible). Every process is stopped by PID and the
bridge deleted by its own name. Without root, Open vSwitch or etcd these tests FAIL.
"""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

LEASE = 1


@pytest.fixture(scope="module")
def env():
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    ovs = subprocess.run(["ovs-vsctl", "-t", "5", "show"], capture_output=True) \
        if shutil.which("ovs-vsctl") else None
    if ovs is None or ovs.returncode != 0:
        problems.append("Open vSwitch is not installed or not running (./run.sh setup)")
    if shutil.which("etcd") is None and not os.path.exists("/usr/bin/etcd"):
        problems.append("etcd is not installed (./run.sh setup installs etcd-server)")
    try:
        import etcd3gw  # noqa: F401
        from sbft_lab import controllers, etcd, lab  # noqa: F401
    except ImportError as exc:
        problems.append(f"{exc} (./run.sh setup)")
    if problems:
        pytest.fail("election lab environment missing: " + "; ".join(problems), pytrace=False)
    from sbft_lab import controllers, etcd, lab

    return controllers, etcd, lab


@pytest.fixture
def lab_lock(env):
    handle = env[2].take_lab_lock()
    yield
    handle.close()


@pytest.fixture
def start(env, lab_lock, tmp_path, request):
    """``start(etcd_members=3, count=2, **kwargs)`` → (etcd cluster, controller set); both
    stopped on teardown, whose controller logs must hold no traceback or OpenFlow error."""
    controllers, etcd, _ = env
    started = []

    def run(etcd_members=3, count=2, start_etcd=True, leader_lease=LEASE, **kwargs):
        cluster = etcd.EtcdCluster(str(tmp_path), members=etcd_members)
        started.append(cluster)
        if start_etcd:
            cluster.start()
        cset = controllers.ControllerSet(str(tmp_path), cluster.url, count=count,
                                         leader_lease=leader_lease, **kwargs)
        started.append(cset)
        cset.start(wait_leader=start_etcd)
        return cluster, cset

    yield run
    problems = []
    for thing in reversed(started):
        if hasattr(thing, "dump_flows"):
            with open(tmp_path / "flows.txt", "w") as out:
                out.write(thing.dump_flows())
        thing.stop()
        if hasattr(thing, "log_path"):
            for index in range(thing.count):
                if os.path.exists(thing.log_path(index)):
                    log = thing.log(index)
                    for marker in ("Traceback", "OFPErrorMsg"):
                        if marker in log:
                            problems.append(f"controller {index} log holds {marker} "
                                            f"({thing.log_path(index)})")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def _service_cookies(cset):
    """The cookies of the service flows (everything but the flows file's priority-0 entry)."""
    return {cookie for cookie, priority, _ in cset.flows() if priority >= 40000}


def _cookie(term):
    return (0x5BF8 << 48) | term


def _wait(predicate, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _heartbeat(cset, index, seq=None):
    """An (unauthenticated: no keys configured) HTTP heartbeat of lb1 → the answer."""
    body = json.dumps({"seq": seq or int(time.time() * 1000), "service_ok": True,
                       "counters": {}}).encode()
    request = urllib.request.Request(f"{cset.url(index)}/sbft/replicas/lb1/heartbeat",
                                     data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read().decode())


def _leader_status(cset, index):
    block = cset.controller(index)
    return block if block and block["role"] == "leader" else None


def _settled(cset, leader):
    """The leader is MASTER, the others SLAVE, and the switch holds its service flows with a
    primary (all three ports up): returns (term, cookie)."""
    term = cset.controller(leader)["term"]
    cset.wait_roles(leader)
    _wait(lambda: _service_cookies(cset) == {_cookie(term)}
          and len([f for f in cset.flows() if f[1] >= 40000]) == 6, 20,
          f"the service flows of term {term}")
    return term


def test_one_leader_is_master_on_the_switch_and_a_sigkilled_leader_is_replaced_in_time(start):
    cluster, cset = start(etcd_members=3, count=3)
    leader = cset.wait_leader()
    term = _settled(cset, leader)
    health = cset.health(leader)
    primary, epoch = health["primary"], health["epoch"]
    assert primary is not None
    for index in range(3):
        block = cset.controller(index)
        assert block["leader"] == cset.url(leader)
        assert block["term"] == term
        assert block["coordination"] == cluster.url
        assert block["role"] == ("leader" if index == leader else "follower")

    # every controller records heartbeats; only the leader answers as leader, with its term
    for index in range(3):
        answer = _heartbeat(cset, index)
        assert answer["controller"] == {
            "role": "leader" if index == leader else "follower", "term": term}

    killed_at = time.monotonic()
    cset.kill(leader)
    others = [i for i in range(3) if i != leader]
    new = cset.wait_leader(among=others, timeout=10, interval=0.02)
    took = time.monotonic() - killed_at
    assert took <= LEASE + 1, f"a follower led {took:.2f}s after the leader's SIGKILL"
    new_term = cset.controller(new)["term"]
    assert new_term > term
    cset.wait_roles(new)
    _wait(lambda: _service_cookies(cset) == {_cookie(new_term)}, 10,
          "the new leader's cookie on every service flow")
    # warm: the stored view goes on (same primary, no new epoch for a takeover)
    health = cset.health(new)
    assert (health["primary"], health["epoch"]) == (primary, epoch)
    assert [i for i in others if cset.controller(i)["leader"] == cset.url(new)] == others


def test_a_frozen_leader_is_deposed_and_changes_nothing_when_it_wakes(start):
    _, cset = start(etcd_members=1, count=2)
    old = cset.wait_leader()
    old_term = _settled(cset, old)
    other = 1 - old
    cset.kill(old, signal.SIGSTOP)  # cut off from everything: no keepalive, no switch
    try:
        _wait(lambda: _leader_status(cset, other), LEASE + 5, "the follower to lead")
        new_term = cset.controller(other)["term"]
        cset.wait_roles(other)
        _wait(lambda: _service_cookies(cset) == {_cookie(new_term)}, 10, "the new cookie")
    finally:
        cset.kill(old, signal.SIGCONT)
    # the woken leader fenced itself (its clock ran on): a follower of the new term
    _wait(lambda: (cset.controller(old) or {}).get("role") == "follower"
          and cset.controller(old)["term"] == new_term, 10, "the old leader to follow")
    cset.wait_roles(other)
    time.sleep(2 * LEASE)
    assert _service_cookies(cset) == {_cookie(new_term)}
    assert _cookie(old_term) not in {cookie for cookie, _, _ in cset.flows()}
    assert cset.leaders() == [other]


@pytest.mark.parametrize("lost", ["a follower member", "etcd's raft leader"])
def test_etcd_member_loss_one_of_three_nothing_two_no_leader_one_back_a_leader(start, lost):
    """With the default 2 s lease. Losing etcd's own raft leader stalls etcd while it elects
    another (about 0.5 to 1.5 s here); the controller leader may fence itself meanwhile, but
    etcd extends every lease when it elects its leader, so it finds its key still its own and
    leads again in the same term: the same leader, the same term, the same flows."""
    lease = 2
    cluster, cset = start(etcd_members=3, count=2, leader_lease=lease)
    leader = cset.wait_leader()
    term = _settled(cset, leader)
    flows_before = sorted((c, p) for c, p, _ in cset.flows())

    raft_leader = _wait(lambda: [cluster.raft_leader()] if cluster.raft_leader() is not None
                        else None, 10, "etcd's raft leader", interval=0.2)[0]
    victim = raft_leader if lost == "etcd's raft leader" else (raft_leader + 1) % 3
    cluster.kill(victim)
    time.sleep(3 * lease)
    assert cset.leaders() == [leader]
    assert cset.controller(leader)["term"] == term
    assert sorted((c, p) for c, p, _ in cset.flows()) == flows_before

    cluster.kill(next(i for i in range(3) if i != victim))
    _wait(lambda: cset.leaders() == [], lease + 3, "the leader to fence itself")
    time.sleep(1)
    for index in range(2):
        block = cset.controller(index)
        assert block["role"] == "follower" and block["leader"] is None, block
        assert block["reason"].startswith(("etcd unreachable", "lease lost", "fenced")), block
    assert sorted((c, p) for c, p, _ in cset.flows()) == flows_before  # data plane kept

    back = time.monotonic()
    cluster.start_member(victim, wait=False)
    new = cset.wait_leader(timeout=20, interval=0.02)
    took = time.monotonic() - back
    assert took <= lease + 2, f"a leader {took:.2f}s after a member came back"
    cset.wait_roles(new)
    _wait(lambda: _service_cookies(cset) == {_cookie(cset.controller(new)["term"])}, 10,
          "the leader's cookie on every service flow")


def test_etcd_unreachable_at_start_is_said_then_retried_until_it_answers(start, env):
    cluster, cset = start(etcd_members=1, count=1, start_etcd=False)
    _wait(lambda: cset.controller(0), 20, "the REST API")
    block = cset.controller(0)
    assert block["role"] == "follower" and block["leader"] is None
    assert block["reason"].startswith("etcd unreachable: ")
    time.sleep(6)
    log = cset.log(0)
    assert cset.procs[0].poll() is None  # it did not exit
    assert log.count("sbft: etcd unreachable: ") == 1
    assert "this controller does not lead and retries every" in log
    assert "sbft: etcd still unreachable after" in log
    cluster.start()
    _wait(lambda: _leader_status(cset, 0), 20, "a leader once etcd answers")
    assert "sbft: etcd answers again" in cset.log(0)


def _put(cluster, key, value):
    subprocess.run(["etcdctl", "--endpoints", cluster.endpoints[0], "put", key, value],
                   check=True, capture_output=True, timeout=20,
                   env={**os.environ, "ETCDCTL_API": "3"})


@pytest.mark.parametrize("key, value, line", [
    ("/sbft/10.0.0.100/leader", '{"format": 9, "id": "x", "url": "http://x:1"}',
     "sbft: etcd key /sbft/10.0.0.100/leader was written by format version 9; this "
     "controller speaks 1: refused"),
    ("/sbft/10.0.0.100/state", '{"version": 7}',
     "sbft: state file etcd key /sbft/10.0.0.100/state: format version 7 is newer than this "
     "controller's (1)"),
])
def test_keys_of_an_unknown_format_version_are_refused_with_one_line(env, lab_lock, tmp_path,
                                                                     key, value, line):
    controllers, etcd, _ = env
    with etcd.EtcdCluster(str(tmp_path), members=1) as cluster:
        _put(cluster, key, value)
        cset = controllers.ControllerSet(str(tmp_path), cluster.url, count=1)
        try:
            cset.start(wait_leader=False)
            assert cset.procs[0].wait(timeout=30) == 2
            assert cset.flows() == []  # it touched nothing
        finally:
            cset.stop()
        log = cset.log(0)
        assert line in log, log[-2000:]
        assert "Traceback" not in log


def test_an_openflow_1_0_switch_is_refused_with_one_line(start):
    _, cset = start(etcd_members=1, count=1, protocols="OpenFlow10")
    _wait(lambda: "need OpenFlow 1.3" in cset.log(0), 20, "the refusal")
    time.sleep(1)
    assert cset.flows() == []


def test_a_deposed_leaders_state_write_fails_in_real_etcd(env, lab_lock, tmp_path):
    """The store's transaction against a real etcd: once another controller holds the leader
    key, the old leader's write is refused (and it is told to step down); the new one's is
    not."""
    _, etcd, _ = env
    from sbft_ryu.etcd_store import Etcd, EtcdStore, key_prefix
    from sbft_ryu.store import NotWritten

    with etcd.EtcdCluster(str(tmp_path), members=1) as cluster:
        host, port = cluster.endpoints[0].split(":")
        client = Etcd([(host, int(port))], timeout=2)
        prefix = key_prefix("10.0.0.100")
        refused = []
        old = EtcdStore(client, prefix, lambda: True, refused.append)
        lease = client.grant(LEASE)
        created, term = client.create(prefix + "leader", b"old", lease)
        assert created
        old.term = term
        old.save({"who": "old", "n": 1})
        client.revoke(lease)  # its lease ended (as if it had stalled)
        new = EtcdStore(client, prefix, lambda: True, refused.append)
        created, new_term = client.create(prefix + "leader", b"new", client.grant(LEASE))
        assert created and new_term > term
        assert new.load()["who"] == "old"
        new.term = new_term
        with pytest.raises(NotWritten):
            old.save({"who": "old", "n": 2})
        assert len(refused) == 1 and "deposed" in refused[0]
        new.save({"who": "new", "n": 3})
        assert new.load() == {"who": "new", "n": 3, "version": 1}
