"""The coordinator and the etcd store against an in-memory etcd on a fake clock: who leads,
takeover order, fencing, refused writes, unknown formats, etcd unreachable."""

import base64
import json
import logging

import pytest

from sbft_ryu import config, election
from sbft_ryu.coordination import Coordinator, Hooks
from sbft_ryu.election import FOLLOWER, LEADER
from sbft_ryu.etcd_store import Etcd, EtcdError, EtcdStore, key_prefix
from sbft_ryu.store import NotWritten, StateError

PREFIX = key_prefix("10.0.0.100")


def _d(text):
    return base64.b64decode(text)


class FakeEtcd:
    """The subset of etcd the coordinator uses: revisions, leases that expire on the fake
    clock, create-if-absent and compare transactions."""

    endpoints = ("fake:2379",)

    def __init__(self, clock):
        self.clock = clock
        self.revision = 1
        self.kv = {}  # key -> [value, create_revision, mod_revision, lease]
        self.leases = {}  # id -> (ttl, expires at)
        self.down = False
        self._next_lease = 100

    def _check(self):
        if self.down:
            raise EtcdError("fake:2379: connection refused")
        self.expire()

    def expire(self):
        for lease, (_, at) in list(self.leases.items()):
            if self.clock[0] >= at:
                self._revoke(lease)

    def _revoke(self, lease):
        self.leases.pop(lease, None)
        for key in [k for k, v in self.kv.items() if v[3] == lease]:
            del self.kv[key]
            self.revision += 1

    def promote(self):
        """What a newly elected etcd raft leader does: every lease gets its full TTL again."""
        self.leases = {lease: (ttl, self.clock[0] + ttl) for lease, (ttl, _) in
                       self.leases.items()}

    def get(self, key):
        self._check()
        item = self.kv.get(key)
        if item is None:
            return None
        return item[0], {"create_revision": item[1], "mod_revision": item[2], "lease": item[3]}

    def grant(self, ttl):
        self._check()
        self._next_lease += 1
        self.leases[self._next_lease] = (ttl, self.clock[0] + ttl)
        return self._next_lease

    def keepalive(self, lease):
        self._check()
        if lease not in self.leases:
            return -1
        ttl = self.leases[lease][0]
        self.leases[lease] = (ttl, self.clock[0] + ttl)
        return ttl

    def revoke(self, lease):
        self._check()
        self._revoke(lease)

    def txn(self, compare, success):
        self._check()
        for c in compare:
            item = self.kv.get(_d(c["key"]).decode())
            target = {"CREATE": 1, "MOD": 2}[c["target"]]
            have = item[target] if item else 0
            if have != c[c["target"].lower() + "_revision"]:
                return False, self.revision
        self.revision += 1
        for op in success:
            put = op["request_put"]
            key = _d(put["key"]).decode()
            created = self.kv[key][1] if key in self.kv else self.revision
            self.kv[key] = [_d(put["value"]), created, self.revision, put.get("lease", 0)]
        return True, self.revision

    def create(self, key, value, lease):
        from sbft_ryu.etcd_store import _b64

        return self.txn([{"key": _b64(key), "target": "CREATE", "create_revision": 0}],
                        [{"request_put": {"key": _b64(key), "value": _b64(value),
                                          "lease": lease}}])


class Recorder(Hooks):
    def __init__(self):
        self.calls = []

    def restore(self, state, term):
        self.calls.append(("restore", state, term))

    def lead(self, term):
        self.calls.append(("lead", term))

    def follow(self, term):
        self.calls.append(("follow", term))

    def stepped_down(self, reason):
        self.calls.append(("stepped_down", reason))


def _controller(etcd, clock, name, lease="1"):
    cfg = config.build_config({"coordination": "etcd://fake:2379", "leader_lease": lease})
    holder = {}
    store = EtcdStore(etcd, PREFIX, lambda: holder["c"].may_write(),
                      lambda reason: holder["c"].refused_write(reason))
    hooks = Recorder()
    logger = logging.getLogger(f"test.sbft.coordination.{name}")
    logger.setLevel(logging.INFO)  # (other tests' libraries change levels)
    coordinator = Coordinator(cfg, etcd, store, f"http://{name}:8080", hooks=hooks,
                              logger=logger, ident=name,
                              clock=lambda: clock[0])
    holder["c"] = coordinator
    return coordinator, store, hooks


@pytest.fixture
def clock():
    return [100.0]


@pytest.fixture
def etcd(clock):
    return FakeEtcd(clock)


def test_the_first_to_campaign_leads_and_takes_over_before_it_acts(etcd, clock):
    c1, store, hooks = _controller(etcd, clock, "c1")
    c1.step(clock[0])
    term = etcd.kv[PREFIX + "leader"][1]
    assert hooks.calls == [("restore", None, term), ("lead", term)]
    assert c1.acting(clock[0])
    assert c1.status(clock[0]) == (LEADER, "http://c1:8080", term, "elected")
    assert store.term == term
    record = json.loads(etcd.kv[PREFIX + "leader"][0])
    assert record == {"format": 1, "id": "c1", "url": "http://c1:8080"}


def test_the_second_follows_the_first_and_is_told_its_term(etcd, clock):
    c1, _, _ = _controller(etcd, clock, "c1")
    c2, _, hooks2 = _controller(etcd, clock, "c2")
    c1.step(clock[0])
    c2.step(clock[0])
    term = c1.election.term
    assert hooks2.calls == [("follow", term)]
    assert c2.status(clock[0]) == (FOLLOWER, "http://c1:8080", term, "following")
    assert not c2.acting(clock[0]) and not c2.may_write()
    c2.step(clock[0] + 0.1)
    assert hooks2.calls == [("follow", term)]  # once per term


def test_a_dead_leaders_key_expires_with_its_lease_and_a_follower_wins_a_higher_term(etcd,
                                                                                    clock):
    c1, _, _ = _controller(etcd, clock, "c1")
    c2, _, hooks2 = _controller(etcd, clock, "c2")
    c1.step(clock[0])
    c2.step(clock[0])
    old = c1.election.term
    clock[0] += 0.99  # c1 is dead: no keepalive
    c2.step(clock[0])
    assert not c2.acting(clock[0])
    clock[0] += 0.02
    c2.step(clock[0])
    assert c2.acting(clock[0]) and c2.election.term > old
    assert hooks2.calls[-2:] == [("restore", None, c2.election.term),
                                 ("lead", c2.election.term)]


def test_a_leader_that_keeps_its_lease_stays_leader(etcd, clock):
    c1, _, _ = _controller(etcd, clock, "c1")
    c2, _, _ = _controller(etcd, clock, "c2")
    for _ in range(40):  # 4 s of rounds, every 0.1 s
        c1.step(clock[0])
        c2.step(clock[0])
        clock[0] += 0.1
    assert c1.acting(clock[0]) and not c2.acting(clock[0])


def test_a_leader_cut_off_from_etcd_fences_itself_before_its_key_can_expire(etcd, clock):
    c1, _, hooks = _controller(etcd, clock, "c1")
    c1.step(clock[0])
    start = clock[0]
    etcd.down = True
    while c1.acting(clock[0]):
        c1.step(clock[0])
        clock[0] += 0.01
    fenced = clock[0]
    assert fenced - start == pytest.approx(0.8, abs=0.02)  # ttl 1 - margin 0.2
    etcd.down = False
    etcd.expire()
    assert PREFIX + "leader" in etcd.kv  # a follower could not have won before
    etcd.down = True
    c1.step(clock[0])
    assert c1.status(clock[0])[0] == FOLLOWER
    assert hooks.calls[-1][0] == "stepped_down"
    assert "lease lost" in hooks.calls[-1][1]


def test_the_state_written_by_a_leader_is_what_the_next_one_restores(etcd, clock):
    c1, store1, _ = _controller(etcd, clock, "c1")
    c2, _, hooks2 = _controller(etcd, clock, "c2")
    c1.step(clock[0])
    store1.save({"cluster": {"epoch": 4}})
    c2.step(clock[0])
    clock[0] += 1.01
    c2.step(clock[0])
    assert hooks2.calls[-2][0] == "restore"
    assert hooks2.calls[-2][1] == {"cluster": {"epoch": 4}, "version": 1}


def test_a_deposed_leaders_write_fails_and_it_steps_down(etcd, clock):
    c1, store1, hooks1 = _controller(etcd, clock, "c1")
    c2, _, _ = _controller(etcd, clock, "c2")
    c1.step(clock[0])
    store1.save({"n": 1})
    # c1 stalls (e.g. a long GC) past its lease; c2 takes over; c1 has not noticed yet
    clock[0] += 1.01
    c2.step(clock[0])
    assert c2.acting(clock[0])
    c1.election.kept_at = clock[0]  # as if a (stale) keepalive had been answered
    with pytest.raises(NotWritten):
        store1.save({"n": 2})
    assert not c1.acting(clock[0]) and c1.election.role == FOLLOWER
    assert hooks1.calls[-1][0] == "stepped_down"
    assert "state write refused" in hooks1.calls[-1][1]
    assert json.loads(etcd.kv[PREFIX + "state"][0])["n"] == 1


def test_a_write_on_top_of_a_state_changed_by_someone_else_fails(etcd, clock):
    c1, store1, _ = _controller(etcd, clock, "c1")
    c1.step(clock[0])
    store1.save({"n": 1})
    etcd.txn([], [{"request_put": {"key": base64.b64encode(
        (PREFIX + "state").encode()).decode(), "value": base64.b64encode(b"{}").decode()}}])
    with pytest.raises(NotWritten):
        store1.save({"n": 2})
    assert not c1.acting(clock[0])


def test_a_follower_writes_nothing(etcd, clock):
    c1, _, _ = _controller(etcd, clock, "c1")
    c2, store2, _ = _controller(etcd, clock, "c2")
    c1.step(clock[0])
    c2.step(clock[0])
    revision = etcd.revision
    with pytest.raises(NotWritten):
        store2.save({"n": 1})
    assert etcd.revision == revision


def test_etcd_unreachable_at_start_leaves_a_follower_without_leader_that_says_why(etcd, clock,
                                                                                 caplog):
    etcd.down = True
    c1, _, hooks = _controller(etcd, clock, "c1")
    with caplog.at_level(logging.INFO, logger="test.sbft.coordination"):
        assert c1.check_at_start() is False
        for _ in range(70):  # 7 s of rounds
            c1.step(clock[0])
            clock[0] += 0.1
    role, leader, term, reason = c1.status(clock[0])
    assert (role, leader, term) == (FOLLOWER, None, 0)
    assert reason == "etcd unreachable: fake:2379: connection refused"
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("sbft: etcd unreachable: fake:2379: connection refused; this "
                               "controller does not lead and retries every 0.1s")
    assert len([line for line in lines if "still unreachable" in line]) == 1  # every 5 s
    etcd.down = False
    with caplog.at_level(logging.INFO, logger="test.sbft.coordination"):
        c1.step(clock[0])
    assert c1.acting(clock[0])
    assert any("etcd answers again" in r.getMessage() for r in caplog.records)


def test_a_leader_key_of_an_unknown_format_is_refused_and_never_overwritten(etcd, clock, caplog):
    etcd.kv[PREFIX + "leader"] = [b'{"format": 9, "id": "x", "url": "u"}', 5, 5, 0]
    c1, _, hooks = _controller(etcd, clock, "c1")
    with pytest.raises(election.LeaderRecordError) as info:
        c1.check_at_start()
    assert "written by format version 9; this controller speaks 1: refused" in str(info.value)
    with caplog.at_level(logging.INFO, logger="test.sbft.coordination"):
        for _ in range(3):
            c1.step(clock[0])
    assert c1.status(clock[0])[0] == FOLLOWER
    assert "format version 9" in c1.status(clock[0])[3]
    assert etcd.kv[PREFIX + "leader"][0].startswith(b'{"format": 9')
    assert len([r for r in caplog.records if "format version 9" in r.getMessage()]) == 1


def test_a_state_of_an_unknown_format_is_refused_at_start_and_at_takeover(etcd, clock):
    etcd.kv[PREFIX + "state"] = [b'{"version": 7}', 3, 3, 0]
    c1, store, hooks = _controller(etcd, clock, "c1")
    with pytest.raises(StateError) as info:
        c1.check_at_start()
    assert str(info.value) == ("state file etcd key /sbft/10.0.0.100/state: format version 7 "
                               "is newer than this controller's (1)")
    c1.step(clock[0])  # (had it not stopped at start) it would not lead on it
    assert not c1.acting(clock[0]) and ("lead", 2) not in hooks.calls
    assert "will not lead" in c1.status(clock[0])[3]
    c1.step(clock[0])
    assert PREFIX + "leader" not in etcd.kv  # it let go of the key, and does not campaign
    assert etcd.kv[PREFIX + "state"][0] == b'{"version": 7}'


class _Endpoint:
    def __init__(self, name, answers):
        self.name, self.answers, self.calls = name, answers, 0

    def get_url(self, path):
        return path

    def post(self, url, json=None):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class ConnectionFailedError(Exception):
    pass


class PreconditionFailedError(Exception):
    pass


def test_etcd_tries_the_endpoints_in_order_and_sticks_to_the_one_that_answered():
    made = {}

    def make(host, port, api_path, timeout):
        answers = {"a": [ConnectionFailedError("refused")] * 3,
                   "b": [{"kvs": []}, {"kvs": []}]}[host]
        made[host] = _Endpoint(host, answers)
        return made[host]

    etcd = Etcd([("a", 1), ("b", 2)], 0.5, make_client=make)
    assert etcd.get("/k") is None
    assert etcd.get("/k") is None
    assert (made["a"].calls, made["b"].calls) == (1, 2)


def test_etcd_names_every_endpoint_when_none_answers():
    def make(host, port, api_path, timeout):
        return _Endpoint(host, [ConnectionFailedError(f"{host} refused")])

    etcd = Etcd([("a", 1), ("b", 2)], 0.5, make_client=make)
    with pytest.raises(EtcdError) as info:
        etcd.grant(1)
    assert str(info.value) == "a:1: a refused; b:2: b refused"


def test_etcd_does_not_retry_an_answer_that_refuses():
    def make(host, port, api_path, timeout):
        return _Endpoint(host, [PreconditionFailedError("no")])

    etcd = Etcd([("a", 1), ("b", 2)], 0.5, make_client=make)
    with pytest.raises(EtcdError, match="^a:1: no$"):
        etcd.keepalive(5)


def test_a_leader_fenced_while_etcd_elected_its_own_leader_leads_again_in_the_same_term(etcd,
                                                                                      clock):
    c1, _, hooks = _controller(etcd, clock, "c1")
    c2, _, hooks2 = _controller(etcd, clock, "c2")
    c1.step(clock[0])
    c2.step(clock[0])
    term = c1.election.term
    etcd.down = True  # etcd's raft leader died: nothing answers for 0.9 s
    for _ in range(9):
        clock[0] += 0.1
        c1.step(clock[0])
        c2.step(clock[0])
    assert not c1.acting(clock[0])  # fenced at 0.8 s
    assert hooks.calls[-1][0] == "stepped_down"
    etcd.promote()  # the new raft leader extends every lease
    etcd.down = False
    c2.step(clock[0])  # the key is still c1's: c2 follows, cannot win
    c1.step(clock[0])
    assert c1.acting(clock[0]) and c1.election.term == term
    assert hooks.calls[-2:] == [("restore", None, term), ("lead", term)]
    assert not c2.acting(clock[0]) and c2.status(clock[0])[2] == term


def test_a_leader_whose_key_expired_meanwhile_does_not_come_back(etcd, clock):
    c1, _, _ = _controller(etcd, clock, "c1")
    c2, _, _ = _controller(etcd, clock, "c2")
    c1.step(clock[0])
    c2.step(clock[0])
    etcd.down = True
    clock[0] += 1.5  # etcd down longer than the lease, no promotion: the key expires
    c1.step(clock[0])
    etcd.down = False
    c2.step(clock[0])
    c1.step(clock[0])
    assert c2.acting(clock[0]) and not c1.acting(clock[0])
    assert c1.status(clock[0])[1] == "http://c2:8080"
