"""Tests for sbft_ryu.referee: heartbeat authentication with rotating nonces, and evidence
verified before it reaches the Judge. Heartbeats go through the real rest.parse_heartbeat."""

import itertools
import json

import pytest

from sbft_ryu import protocol, rest
from sbft_ryu.config import build_config
from sbft_ryu.referee import OFFERS_KEPT, SEQ_WINDOW, AuthError, Referee, SourceError

KEYS = {name: bytes([n]) * 16 for n, name in enumerate(("lb1", "lb2", "lb3"), 1)}
CLIENT = bytes([10, 0, 0, 31])
TRUE, LIE = protocol.digest(b"the reply"), protocol.digest(b"a lie")


@pytest.fixture
def config(raw):
    raw.update(mode="active", voting="on", replica_key=[f"{n} {k.hex()}" for n, k in KEYS.items()])
    return build_config(raw)


def make_referee(config):
    counter = itertools.count(1)
    return Referee(config, new_nonce=lambda: f"nonce-{next(counter)}")


@pytest.fixture
def referee(config):
    return make_referee(config)


def beat(name="lb1", nonce=None, key=None, seq=1, **extra):
    """A heartbeat as the agent sends it (signed when a key is given), parsed by the REST layer."""
    body = {"seq": seq, "service_ok": True, "counters": {"claims": 3}, **extra}
    if nonce is not None:
        body["nonce"] = nonce
    if key is not None:
        body["mac"] = protocol.sign_body(key, name, body)
    return rest.parse_heartbeat(json.dumps(body).encode())


# --- authentication ----------------------------------------------------------------------------

def test_every_keyed_replica_starts_with_its_own_nonce(referee):
    assert referee.nonces == {"lb1": "nonce-1", "lb2": "nonce-2", "lb3": "nonce-3"}
    assert referee.auth_failures == {"lb1": 0, "lb2": 0, "lb3": 0}


def test_a_session_keeps_its_nonce_and_moves_with_the_sequence_number(referee):
    assert referee.authenticate("lb1", beat(nonce="nonce-1", key=KEYS["lb1"])) == "nonce-1"
    # an answer lost in between costs nothing: the nonce did not change, seq 2 never arrived
    assert referee.authenticate("lb1", beat(nonce="nonce-1", key=KEYS["lb1"], seq=3)) == \
        "nonce-1"
    assert (referee.nonces["lb1"], referee.last_seq["lb1"]) == ("nonce-1", 3)
    assert referee.nonces["lb2"] == "nonce-2"  # per replica
    assert referee.auth_failures["lb1"] == 0


def test_a_heartbeat_without_a_nonce_gets_an_offer_and_the_offer_starts_a_session(referee):
    with pytest.raises(AuthError, match="no nonce") as info:
        referee.authenticate("lb1", beat(key=KEYS["lb1"], seq=0))
    assert info.value.nonce == "nonce-4"
    assert referee.nonces["lb1"] == "nonce-1"  # a rejected heartbeat changes no session
    assert referee.auth_failures["lb1"] == 1
    # (a restarted agent: its sequence numbers start again at 0)
    assert referee.authenticate("lb1", beat(nonce="nonce-4", key=KEYS["lb1"], seq=0)) == \
        "nonce-4"
    assert (referee.nonces["lb1"], referee.last_seq["lb1"]) == ("nonce-4", 0)
    with pytest.raises(AuthError, match="stale"):  # an offer starts one session only
        referee.authenticate("lb1", beat(nonce="nonce-1", key=KEYS["lb1"], seq=1))


def test_a_replayed_heartbeat_is_rejected(referee):
    accepted = beat(nonce="nonce-1", key=KEYS["lb1"], seq=5)
    referee.authenticate("lb1", accepted)
    for replayed in (accepted, beat(nonce="nonce-1", key=KEYS["lb1"], seq=4)):
        with pytest.raises(AuthError, match="replayed") as info:
            referee.authenticate("lb1", replayed)
        assert info.value.nonce.startswith("nonce-")
    assert referee.auth_failures["lb1"] == 2 and referee.last_seq["lb1"] == 5


def test_a_sequence_number_beyond_the_window_is_rejected(referee):
    referee.authenticate("lb1", beat(nonce="nonce-1", key=KEYS["lb1"], seq=5))
    with pytest.raises(AuthError, match="too far"):
        referee.authenticate("lb1", beat(nonce="nonce-1", key=KEYS["lb1"],
                                         seq=5 + SEQ_WINDOW + 1))
    assert referee.authenticate("lb1", beat(nonce="nonce-1", key=KEYS["lb1"],
                                            seq=5 + SEQ_WINDOW)) == "nonce-1"


def test_offers_are_bounded_and_the_oldest_expire(referee):
    offers = []
    for _ in range(OFFERS_KEPT + 1):
        with pytest.raises(AuthError) as info:
            referee.authenticate("lb1", beat(key=b"x" * 16, nonce="forged"))
        offers.append(info.value.nonce)
    with pytest.raises(AuthError, match="stale"):
        referee.authenticate("lb1", beat(nonce=offers[0], key=KEYS["lb1"]))
    assert referee.authenticate("lb1", beat(nonce=offers[-1], key=KEYS["lb1"])) == offers[-1]


def test_a_pinned_replica_is_heard_only_from_its_source(raw):
    raw["replica_source"] = ["lb2 10.254.0.12"]
    referee = make_referee(build_config(raw))
    assert referee.how("lb2") == "source" and referee.how("lb3") is None
    assert referee.authenticate("lb2", beat("lb2"), "10.254.0.12") is None
    for address in ("10.254.0.13", None):
        with pytest.raises(SourceError, match="pinned source") as info:
            referee.authenticate("lb2", beat("lb2"), address)
        assert info.value.nonce is None
    assert referee.auth_failures["lb2"] == 2
    assert referee.authenticate("lb3", beat("lb3"), "10.9.9.9") is None  # not pinned


@pytest.mark.parametrize("key", [KEYS["lb2"], b"\x00" * 16, None], ids=["another-replicas-key",
                                                                       "a-guessed-key", "no-mac"])
def test_a_heartbeat_not_signed_with_the_replicas_key_is_rejected(referee, key):
    with pytest.raises(AuthError, match="MAC does not verify" if key else "no nonce|MAC"):
        referee.authenticate("lb1", beat(nonce="nonce-1", key=key))
    assert referee.nonces["lb1"] == "nonce-1"
    assert referee.auth_failures == {"lb1": 1, "lb2": 0, "lb3": 0}


def test_a_forged_copy_of_a_signed_heartbeat_is_rejected(referee):
    body = {"seq": 1, "service_ok": True, "counters": {}, "nonce": "nonce-1"}
    body["mac"] = protocol.sign_body(KEYS["lb1"], "lb1", body)
    body["service_ok"] = False  # changed in flight
    with pytest.raises(AuthError):
        referee.authenticate("lb1", rest.parse_heartbeat(json.dumps(body).encode()))


def test_a_signed_heartbeat_of_one_replica_does_not_pass_as_another(referee):
    referee.nonces["lb2"] = "nonce-1"  # even with the same nonce
    with pytest.raises(AuthError):
        referee.authenticate("lb2", beat("lb1", nonce="nonce-1", key=KEYS["lb1"]))


def test_replicas_without_a_key_are_not_authenticated(raw):
    raw["replica_key"] = [f"lb1 {KEYS['lb1'].hex()}"]  # voting off: keys are optional
    referee = make_referee(build_config(raw))
    assert referee.nonces == {"lb1": "nonce-1"} and referee.judge is None
    assert referee.authenticate("lb2", beat("lb2")) is None
    assert referee.authenticate("lb2", beat("lb2", nonce="whatever", key=b"k" * 16)) is None
    with pytest.raises(AuthError):
        referee.authenticate("lb1", beat("lb1"))


# --- evidence ------------------------------------------------------------------------------------

def signed(kind, author, value, start=1000, key=None):
    statement = protocol.Statement(CLIENT, 40000, start, start + 9, value)
    return protocol.encode(kind, author, [statement], KEYS[author] if key is None else key)


def item(start=1000, liar="lb3"):
    """What the primary reports: its claim and both votes (``liar`` votes another digest)."""
    return (signed(protocol.CLAIM, "lb1", TRUE, start),
            *(signed(protocol.VOTE, name, LIE if name == liar else TRUE, start)
              for name in ("lb2", "lb3")))


def test_verified_evidence_reaches_the_judge(referee):
    assert referee.evidence("lb1", [item(1000)], 10.0) == set()
    stats = referee.judge.stats
    assert (stats["lb3"].divergences, stats["lb1"].reported) == (1, 1)
    assert referee.judge.suspicion("lb3", 10.0) == 1.0


def test_the_minority_is_byzantine_once_its_suspicion_reaches_the_threshold(referee):
    assert referee.judge.threshold == 3.0  # the configured default
    items = [item(start) for start in (1000, 2000, 3000)]
    assert referee.evidence("lb1", items, 10.0) == {"lb3"}


def test_a_backup_may_report_too(referee):
    claim, honest, lie = item()
    assert referee.evidence("lb3", [(claim, lie)], 10.0) == set()  # one against one
    referee.judge.threshold = 1.0
    assert referee.evidence("lb2", [(claim, honest)], 10.0) == {"lb3"}


@pytest.mark.parametrize("bad", [
    signed(protocol.VOTE, "lb2", TRUE, key=KEYS["lb3"]),  # forged in lb2's name
    signed(protocol.VOTE, "lb2", TRUE)[:-1] + b"\x00",  # MAC tampered
    b"garbage",
    protocol.encode(protocol.VOTE, "lb9", [], b"9" * 16),  # nobody's key
], ids=["forged", "tampered", "garbage", "unknown-author"])
def test_an_item_with_any_bad_batch_is_rejected_whole(referee, bad):
    claim, _, lie = item()
    assert referee.evidence("lb1", [(claim, bad, lie)], 10.0) == set()
    assert referee.judge.stats["lb1"].rejected == 1
    assert referee.judge.stats["lb1"].reported == 0
    assert referee.judge.stats["lb3"].divergences == 0  # nothing of it was heard


def test_an_item_with_nothing_of_the_reporters_own_is_rejected(referee):
    """Anyone may forward batches, but evidence counts only with the reporter's own."""
    assert referee.evidence("lb2", [item()[::2]], 10.0) == set()  # lb1's and lb3's only
    assert referee.judge.stats["lb2"].rejected == 1
    assert referee.judge.stats["lb3"].divergences == 0


def test_good_items_count_beside_rejected_ones(referee):
    referee.judge.threshold = 1.0
    assert referee.evidence("lb1", [(b"garbage",), item()], 10.0) == {"lb3"}
    assert (referee.judge.stats["lb1"].rejected, referee.judge.stats["lb1"].reported) == (1, 1)


def test_without_voting_there_is_no_judge_and_evidence_changes_nothing(raw):
    raw["replica_key"] = [f"{n} {k.hex()}" for n, k in KEYS.items()]
    referee = make_referee(build_config(raw))
    assert referee.judge is None
    assert referee.evidence("lb1", [item()], 10.0) == set()
    assert referee.wire("lb2", [(CLIENT, 40000, 1, 0, 9)], {1: "lb1"}, 10.0) == set()
    assert referee.tainted(2) == []
    referee.readmit("lb3")  # harmless
    referee.compared("lb1", {"claims": 5}, 10.0)


# --- wire reports, tainted connections, readmission, compared counts ---------------------------

def test_f_plus_one_wire_reports_convict_that_epochs_primary(referee):
    epochs = {1: "lb1", 2: "lb2"}
    assert referee.wire("lb2", [(CLIENT, 40000, 1, 0, 9)], epochs, 10.0) == set()
    assert referee.wire("lb3", [(CLIENT, 40000, 1, 0, 9)], epochs, 10.0) == {"lb1"}
    assert referee.judge.stats["lb1"].wire_divergences == 1


def test_wire_reports_of_an_epoch_without_a_primary_are_ignored(referee):
    for reporter in ("lb2", "lb3"):
        assert referee.wire(reporter, [(CLIENT, 40000, 7, 0, 9)], {7: None}, 10.0) == set()
        assert referee.wire(reporter, [(CLIENT, 40000, 8, 0, 9)], {}, 10.0) == set()


def test_tainted_names_the_previous_epochs_connections_as_strings(referee):
    epochs = {1: "lb1"}
    referee.wire("lb2", [(CLIENT, 40000, 1, 0, 9), (CLIENT, 40001, 1, 0, 9)], epochs, 10.0)
    referee.wire("lb3", [(CLIENT, 40000, 1, 0, 9)], epochs, 10.0)
    assert referee.tainted(2) == [["10.0.0.31", 40000], ["10.0.0.31", 40001]]
    # an epoch without a primary may come between: later primaries reset them too
    assert referee.tainted(3) == referee.tainted(2)
    assert referee.tainted(1) == []


def test_readmit_clears_the_suspicion(referee):
    referee.evidence("lb1", [item(1000), item(2000)], 10.0)
    referee.readmit("lb3")
    assert referee.judge.suspicion("lb3", 10.0) == 0.0


def test_compared_feeds_the_judge_from_the_heartbeat_counters(referee):
    referee.compared("lb1", {"claims": 10, "votes_cast": 5}, 10.0)  # baseline
    referee.compared("lb1", {"claims": 60, "votes_cast": 55}, 10.0)
    referee.compared("lb2", {"votes_cast": 7}, 10.0)
    assert referee.judge.compared_mass("lb3", 10.0) == 100.0
    referee.compared("lb1", {"other": 1}, 10.0)  # no vote counters: a count of 0 (a restart)
    assert referee.judge.compared_mass("lb3", 10.0) == 100.0
