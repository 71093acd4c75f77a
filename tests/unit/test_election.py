"""The election's pure half: roles, the self-fence on a fake clock, cookies, leader records."""

import pytest

from sbft_ryu import decide, election
from sbft_ryu.election import FOLLOWER, LEADER, Election, LeaderRecordError


def test_a_new_controller_follows_and_knows_no_leader():
    e = Election(ttl=2)
    assert e.role == FOLLOWER and e.leader is None and e.term == 0
    assert not e.leading(0.0)
    assert e.fence_at() is None


def test_an_elected_leader_leads_until_the_lease_minus_the_margin_from_the_send():
    e = Election(ttl=2)
    assert e.elected(sent_at=10.0, term=7, url="http://c1:8080")
    assert (e.role, e.term, e.leader, e.reason) == (LEADER, 7, "http://c1:8080", "elected")
    assert e.margin == pytest.approx(0.4)
    assert e.fence_at() == pytest.approx(11.6)
    assert e.leading(11.59)
    assert not e.leading(11.6)  # fenced before etcd could let the key expire (12.0)


def test_a_short_lease_keeps_a_margin_of_at_least_a_tenth_of_a_second():
    e = Election(ttl=1)
    e.elected(0.0, 3, "u")
    assert e.fence_at() == pytest.approx(0.8)
    assert Election(ttl=0.4).margin == pytest.approx(0.1)


def test_an_answered_keepalive_moves_the_fence_to_its_send_time():
    e = Election(ttl=2)
    e.elected(0.0, 1, "u")
    assert not e.keepalive_due(0.49)
    assert e.keepalive_due(0.5)
    e.kept(0.5)
    assert e.fence_at() == pytest.approx(2.1)
    e.kept(0.2)  # a late answer to an older keepalive does not move it back
    assert e.fence_at() == pytest.approx(2.1)


def test_check_steps_a_fenced_leader_down_and_says_why():
    e = Election(ttl=1)
    e.elected(0.0, 4, "u")
    assert not e.check(0.79)
    assert e.check(0.8)
    assert e.role == FOLLOWER and e.leader is None
    assert e.reason.startswith("lease lost: no keepalive answered for 0.80s")
    assert not e.check(5.0)  # once


def test_following_another_leader_reports_a_change_of_leader_or_term_only():
    e = Election(ttl=2)
    assert e.following("http://c2:8080", 9)
    assert not e.following("http://c2:8080", 9)
    assert e.following("http://c3:8080", 12)
    assert (e.role, e.leader, e.term, e.reason) == (FOLLOWER, "http://c3:8080", 12,
                                                   "following")


def test_a_leader_that_sees_another_key_is_deposed():
    e = Election(ttl=2)
    e.elected(0.0, 4, "mine")
    e.following("theirs", 9)
    assert e.role == FOLLOWER and not e.leading(0.1)


def test_etcd_unreachable_clears_a_followers_leader_but_a_leader_keeps_until_fenced():
    follower = Election(ttl=2)
    follower.following("http://c2:8080", 3)
    follower.no_leader("etcd unreachable: x")
    assert (follower.leader, follower.reason) == (None, "etcd unreachable: x")
    leader = Election(ttl=2)
    leader.elected(0.0, 3, "me")
    leader.no_leader("etcd unreachable: x")
    assert leader.leading(1.0) and leader.reason == "elected"
    assert not leader.leading(1.6)


def test_lost_ends_a_term_with_its_reason():
    e = Election(ttl=2)
    e.elected(0.0, 3, "me")
    assert e.lost("lease lost: etcd says it expired")
    assert e.role == FOLLOWER and e.reason == "lease lost: etcd says it expired"
    assert not e.lost("again")


def test_followers_poll_at_most_every_tenth_of_a_second():
    assert Election(ttl=2).poll_s == pytest.approx(0.1)
    assert Election(ttl=0.4).poll_s == pytest.approx(0.05)


def test_each_term_has_its_own_cookie_and_standalone_keeps_the_historical_one():
    assert election.service_cookie(0) == decide.SERVICE_COOKIE == 0x5BF7_0000_0000_0001
    assert election.service_cookie(5) == 0x5BF8_0000_0000_0005
    assert election.service_cookie(6) != election.service_cookie(5)
    assert election.service_cookie(2**48 + 5) == election.service_cookie(5)  # 48 bits


def test_a_leader_record_round_trips():
    data = election.leader_record("c1-42-ab", "http://c1:8080")
    assert election.read_leader_record(data, "/sbft/v/leader") == ("c1-42-ab", "http://c1:8080")


@pytest.mark.parametrize("data, reason", [
    (b'{"format": 2, "id": "x", "url": "u"}',
     "etcd key /k was written by format version 2; this controller speaks 1: refused"),
    (b'not json', "etcd key /k: not a leader record (not JSON)"),
    (b'{"id": "x", "url": "u"}', "etcd key /k: not a leader record (no format version)"),
    (b'{"format": true, "id": "x", "url": "u"}',
     "etcd key /k: not a leader record (no format version)"),
    (b'{"format": 1, "url": "u"}', "etcd key /k: not a leader record (no id or url)"),
    (b'[1]', "etcd key /k: not a leader record (no format version)"),
])
def test_a_leader_record_of_another_format_is_refused_with_one_line(data, reason):
    with pytest.raises(LeaderRecordError) as info:
        election.read_leader_record(data, "/k")
    assert str(info.value) == reason
