"""Tests for sbft_ryu.agent.vote.VoteEngine: a primary holds, claims and releases on votes; a
backup votes on claims with its own output (partially, when its stack went quiet) and checks
the wire; disagreements become evidence the controller's Referee verifies. The translator is a
fake answering own_range from a table; time is passed in."""

import functools
import struct
from dataclasses import replace

import pytest

from sbft_ryu import protocol
from sbft_ryu.agent import faults, vote
from sbft_ryu.agent.own_output import ABSTAIN
from sbft_ryu.config import build_config
from sbft_ryu.referee import Referee
from sbft_ryu.protocol import CLAIM, VOTE, Statement

from fakes import FakeTranslator, Token, abstentions_sent

KEYS = {name: bytes([n]) * 16 for n, name in enumerate(("lb1", "lb2", "lb3"), 1)}
ADDRESSES = {"lb1": "10.254.0.1", "lb2": "10.254.0.2", "lb3": "10.254.0.3"}
CLIENT = bytes([10, 0, 0, 31])
REPLY = b"HTTP/1.0 200 OK\r\n\r\nhi"
OTHER = b"HTTP/1.0 200 OK\r\n\r\nXX"
HOLD = 0.2
T = 10.0


def segment(data=REPLY, start=1000, port=40000, fin=False):
    return Statement(CLIENT, port, start, start + len(data) + fin, protocol.digest(data, fin))


SEG = segment()


def engine(name, primary="lb1", required=True, translator=None, fault=None, peers=ADDRESSES):
    sent = []
    make = vote.VoteEngine if fault is None else functools.partial(faults.LyingVoteEngine, fault)
    e = make(name, KEYS[name], translator or FakeTranslator(),
             lambda data, address: sent.append((data, address)))
    e.configure(vote.VoteConfig.of(required=required, f=1, hold_s=HOLD, port=5557, peers=peers,
                                   primary=primary, epoch=3))
    e.sent = sent
    return e


def backup(name="lb2", data=REPLY, **kwargs):
    """A backup whose own stack sent ``data`` for SEG's range."""
    return engine(name, translator=FakeTranslator({SEG.range_key: (data, False)}), **kwargs)


def take(e):
    """The datagrams ``e`` sent since the last call, decoded, with their destination."""
    out = [(protocol.decode(data), address) for data, address in e.sent]
    e.sent.clear()
    return out


def claimed(p, token=None, seg=SEG, now=T):
    """``p`` holds one segment and sends its claim: the claim's raw batch."""
    assert p.hold(token or Token(), b"payload", seg, now) == (True, ())
    p.flush()
    return take(p)[0][0].raw


def voted(b, claim_raw, now=T):
    b.receive(claim_raw, now)
    b.flush()
    sent = take(b)
    return sent[0][0].raw if sent else None


# --- the primary: hold, claim, release ----------------------------------------------------------

def test_configure_keeps_peers_other_than_itself():
    e = engine("lb1")
    assert e.config.peers == {"lb2": "10.254.0.2", "lb3": "10.254.0.3"}
    c = e.config
    assert (c.required, c.f, c.hold_s, c.port, c.primary, c.epoch) == (True, 1, HOLD, 5557, "lb1",
                                                                       3)
    e.configure(vote.VoteConfig.of(required=0, f=0, hold_s="0.5", port="6000", peers={},
                                   primary=None, epoch=4))
    c = e.config
    assert (c.required, c.f, c.hold_s, c.port) == (False, 1, 0.5, 6000)  # at least f = 1


def test_unvoted_replies_are_not_held():
    p = engine("lb1", required=False)
    assert p.hold(Token(), b"payload", SEG, T) == (False, ())
    p.flush()
    assert p.sent == [] and p.counters["released_unvoted"] == 1


def test_a_held_segment_is_claimed_to_every_backup_in_one_signed_batch():
    p = engine("lb1")
    assert p.hold(Token(), b"payload", SEG, T) == (True, ())
    assert p.sent == []  # batched until the flush
    p.flush()
    sent = take(p)
    assert sorted(address for _, address in sent) == [("10.254.0.2", 5557),
                                                       ("10.254.0.3", 5557)]
    for batch, _ in sent:
        assert (batch.kind, batch.author, batch.statements) == (CLAIM, "lb1", (SEG,))
        assert protocol.verify(batch, KEYS["lb1"])
    assert p.counters["claims"] == 1
    p.flush()
    assert p.sent == []  # nothing new


def test_many_claims_go_in_several_batches():
    p = engine("lb1", peers={"lb2": "10.254.0.2"})
    for n in range(protocol.MAX_STATEMENTS + 2):
        p.hold(Token(), b"p", segment(start=1000 + 100 * n), T)
    p.flush()
    assert [len(batch.statements) for batch, _ in take(p)] == [protocol.MAX_STATEMENTS, 2]


def test_f_agreeing_votes_release_the_segment():
    p, b2 = engine("lb1"), backup("lb2")
    token = Token()
    vote_raw = voted(b2, claimed(p, token))
    assert p.receive(vote_raw, T + 0.01) == [(token, b"payload")]
    assert p.pending == {} and p.counters["released_voted"] == 1
    assert p.receive(vote_raw, T + 0.02) == []  # released once
    assert p.receive(voted(backup("lb3"), claimed(engine("lb1"))), T) == []  # not its claim


def test_a_retransmission_of_an_agreed_range_goes_out_at_once():
    p, b2 = engine("lb1"), backup("lb2")
    p.receive(voted(b2, claimed(p)), T)
    assert p.hold(Token(), b"again", SEG, T + 0.5) == (False, ())
    assert p.counters["claims"] == 1


def test_a_retransmission_before_the_votes_replaces_the_held_packet():
    p, b2 = engine("lb1"), backup("lb2")
    first, second = Token("first"), Token("second")
    claim_raw = claimed(p, first)
    assert p.hold(second, b"newer", SEG, T + 0.05) == (True, (first,))  # the caller drops it
    assert p.counters["claims"] == 1
    assert p.receive(voted(b2, claim_raw), T + 0.06) == [(second, b"newer")]


def test_a_segment_without_votes_is_dropped_after_the_hold():
    p = engine("lb1")
    token = Token()
    claimed(p, token)
    assert p.expire(T + HOLD / 2) == []
    assert p.expire(T + HOLD + 0.01) == [token]  # TCP resends it
    assert p.pending == {} and p.counters["vote_timeouts"] == 1


def test_votes_of_strangers_and_garbage_are_rejected():
    p = engine("lb1")
    claimed(p)
    stranger = protocol.encode(VOTE, "lb9", [SEG], b"9" * 16)
    assert p.receive(stranger, T) == () and p.receive(b"junk", T) == ()
    assert p.counters["batches_rejected"] == 2 and len(p.pending) == 1


def test_a_send_error_is_a_missing_vote_not_an_error():
    def unreachable(data, address):
        raise OSError("network unreachable")
    p = engine("lb1")
    p.send = unreachable
    p.hold(Token(), b"payload", SEG, T)
    p.flush()  # does not raise
    assert len(p.pending) == 1


# --- the backup: votes ---------------------------------------------------------------------------

def test_a_backup_votes_with_its_own_digest_to_the_primary_only():
    b2 = backup("lb2")
    b2.receive(claimed(engine("lb1")), T)
    b2.flush()
    [(batch, address)] = take(b2)
    assert address == ("10.254.0.1", 5557)
    assert (batch.kind, batch.author, batch.statements) == (VOTE, "lb2", (SEG,))
    assert protocol.verify(batch, KEYS["lb2"])
    assert b2.counters["votes_cast"] == 1 and list(b2.reports) == []  # agreement: no evidence


def test_claims_of_anyone_but_the_primary_are_ignored():
    b2 = backup("lb2")
    b2.receive(claimed(engine("lb3")), T)  # lb3 is not the primary
    b2.flush()
    assert b2.sent == [] and b2.counters["votes_cast"] == 0


def test_a_claim_waits_for_the_backups_own_output():
    translator = FakeTranslator()
    b2 = engine("lb2", translator=translator)
    b2.receive(claimed(engine("lb1")), T)
    assert list(b2.waiting) == [(CLIENT, 40000)] and b2.counters["votes_cast"] == 0
    translator.own[SEG.range_key] = (REPLY, False)  # its stack caught up
    b2.on_own_output((CLIENT, 40000), T + 0.01)
    b2.flush()
    assert [batch.statements for batch, _ in take(b2)] == [(SEG,)]
    assert b2.waiting == {}


def test_a_backup_that_abstains_casts_no_vote():
    b2 = engine("lb2", translator=FakeTranslator({SEG.range_key: ABSTAIN}))
    b2.receive(claimed(engine("lb1")), T)
    b2.flush()
    assert [s.range_key for s in abstentions_sent(b2)] == [SEG.range_key]  # no vote
    assert b2.counters["abstentions"] == 1 and b2.waiting == {}
    assert b2.counters["votes_cast"] == 0


def test_a_divergent_vote_comes_with_evidence_for_the_controller():
    b3 = backup("lb3", data=OTHER)
    claim_raw = claimed(engine("lb1"))
    vote_raw = voted(b3, claim_raw)
    assert protocol.decode(vote_raw).statements[0].digest == protocol.digest(OTHER)
    assert b3.counters["divergent_votes"] == 1
    assert b3.take_reports(10) == [("evidence", [claim_raw, vote_raw])]


def test_the_primary_reports_a_divergence_once_every_backup_voted():
    p, b2, b3 = engine("lb1"), backup("lb2"), backup("lb3", data=OTHER)
    token = Token()
    claim_raw = claimed(p, token)
    lie = voted(b3, claim_raw)
    assert p.receive(lie, T) == []  # a divergent vote releases nothing
    assert p.counters["divergent_votes"] == 1 and list(p.reports) == []  # lb2 not heard yet
    honest = voted(b2, claim_raw)
    assert p.receive(honest, T) == [(token, b"payload")]
    assert p.take_reports(10) == [("evidence", [claim_raw, lie, honest])]
    p.expire(T + vote.RECENT_S + 1)
    assert list(p.reports) == []  # reported once


def test_a_divergence_without_every_vote_is_reported_when_the_claim_expires():
    p, b3 = engine("lb1"), backup("lb3", data=OTHER)
    claim_raw = claimed(p)
    lie = voted(b3, claim_raw)
    p.receive(lie, T)
    p.expire(T + HOLD + 0.01)
    assert p.take_reports(10) == [("evidence", [claim_raw, lie])]


def test_take_reports_hands_out_at_most_limit_oldest_first():
    e = engine("lb2")
    e.reports.extend(("wire", n) for n in range(5))
    assert e.take_reports(2) == [("wire", 0), ("wire", 1)]
    assert e.take_reports(10) == [("wire", 2), ("wire", 3), ("wire", 4)]
    assert e.take_reports(10) == []


# --- partial votes of a quiet backup --------------------------------------------------------------

PATIENCE = max(HOLD, vote.PARTIAL_QUIET_S)  # how long a claim waits for a quiet stack


def quiet_backup(quiet):
    return engine("lb2", translator=FakeTranslator(
        partial={SEG.range_key: (REPLY[:5], False)}, quiet=quiet))


def test_a_quiet_backup_votes_with_what_it_has_after_its_patience():
    """The primary claims bytes this stack never sends (a liar, or a badly lagging backup):
    a partial vote lets a majority see it."""
    b2 = quiet_backup(quiet=PATIENCE)
    claim_raw = claimed(engine("lb1"))
    b2.receive(claim_raw, T)
    b2.expire(T + PATIENCE - 0.01)
    assert b2.counters["partial_votes"] == 0 and len(b2.waiting) == 1
    b2.expire(T + PATIENCE + 0.001)
    assert b2.counters["partial_votes"] == 1 and b2.waiting == {}
    b2.flush()
    [(batch, _)] = take(b2)
    assert batch.statements[0].digest == protocol.digest(REPLY[:5])
    assert b2.take_reports(10) == [("evidence", [claim_raw, batch.raw])]


def test_a_busy_backup_keeps_waiting_then_gives_up():
    b2 = quiet_backup(quiet=0.0)  # its stack keeps sending: merely behind
    b2.receive(claimed(engine("lb1")), T)
    b2.expire(T + PATIENCE + 3 * HOLD)
    assert b2.counters["partial_votes"] == 0 and len(b2.waiting) == 1
    b2.expire(T + PATIENCE + 4 * HOLD + 0.01)
    assert b2.counters["claims_unanswerable"] == 1 and b2.waiting == {}


def test_a_claim_for_a_connection_the_backup_does_not_know_does_not_hang_expire():
    translator = FakeTranslator(quiet=float("inf"))  # raises after 100 questions
    b2 = engine("lb2", translator=translator)
    b2.receive(claimed(engine("lb1")), T)
    b2.expire(T + PATIENCE + 0.001)
    assert len(translator.asked) <= 3


# --- the wire check ------------------------------------------------------------------------------

def test_a_matching_wire_copy_is_only_counted():
    b2 = backup("lb2")
    b2.on_wire(SEG, T)
    assert b2.counters["wire_checked"] == 1 and b2.counters["wire_divergent"] == 0
    assert list(b2.reports) == [] and b2.votes_out == []


def test_a_divergent_wire_copy_is_reported_with_its_range_and_epoch():
    b2 = backup("lb2")
    tampered = Statement(CLIENT, 40000, SEG.start, SEG.end, protocol.digest(b"XX" + REPLY[2:]))
    b2.on_wire(tampered, T)
    assert b2.counters["wire_divergent"] == 1
    assert b2.take_reports(10) == [("wire", (CLIENT, 40000, 3, SEG.start, SEG.end, 0))]
    b2.configure(replace(b2.config, generation=4))
    b2.on_wire(tampered, T)
    assert b2.take_reports(10) == [("wire", (CLIENT, 40000, 3, SEG.start, SEG.end, 4))]


def test_a_wire_copy_waits_for_the_backups_own_output():
    translator = FakeTranslator()
    b2 = engine("lb2", translator=translator)
    b2.on_wire(SEG, T)
    assert len(b2.waiting) == 1
    translator.own[SEG.range_key] = (OTHER, False)
    b2.on_own_output((CLIENT, 40000), T)
    assert [kind for kind, _ in b2.take_reports(10)] == ["wire"]


# --- an outvoted primary ---------------------------------------------------------------------

def test_a_primary_outvoted_by_every_backup_resets_the_connection_after_a_while():
    p = engine("lb1")
    token = Token()
    claim_raw = claimed(p, token)
    for name in ("lb2", "lb3"):
        p.receive(voted(backup(name, data=OTHER), claim_raw), T)
    assert p.counters["outvoted"] == 1 and p.resets == []
    p.expire(T + vote.OUTVOTED_RESET_S - 0.01)
    assert p.resets == []
    p.expire(T + vote.OUTVOTED_RESET_S)
    assert p.resets == [(CLIENT, 40000)] and p.counters["outvoted_resets"] == 1


# --- faults (tests only) are caught by the controller's referee ------------------------------

@pytest.fixture
def referee(raw):
    raw.update(mode="active", voting="on", suspicion_threshold="1",
               replica_key=[f"{n} {k.hex()}" for n, k in KEYS.items()])
    return Referee(build_config(raw))


def evidence_of(e):
    return [raws for kind, raws in e.take_reports(100) if kind == "evidence"]


def test_honest_evidence_convicts_the_liar(referee):
    p, b2, b3 = engine("lb1"), backup("lb2"), backup("lb3", data=OTHER)
    claim_raw = claimed(p)
    for b in (b3, b2):
        p.receive(voted(b, claim_raw), T)
    assert referee.evidence("lb1", evidence_of(p), T) == {"lb3"}


def test_a_false_accuser_votes_honestly_is_heard_but_convicts_nobody(referee):
    p, accuser, honest = engine("lb1"), backup("lb2", fault="false-accuse"), backup("lb3")
    claim_raw = claimed(p)
    accuser_vote = voted(accuser, claim_raw)
    assert protocol.decode(accuser_vote).statements == (SEG,)  # its real vote agrees
    p.receive(accuser_vote, T)
    p.receive(voted(honest, claim_raw), T)
    items = evidence_of(accuser)
    assert len(items) == 1 and items[0][0] == claim_raw
    assert referee.evidence("lb2", items, T) == set()
    assert referee.judge.stats["lb2"].reported == 1  # verified: its own statement
    assert referee.judge.suspicion("lb1", T) == 0.0  # one against one: no majority
    assert evidence_of(p) == [] and evidence_of(honest) == []  # nobody else disagreed
    # should lb3's statement on the range reach the judge, the accuser is the minority
    lb3_says = protocol.encode(VOTE, "lb3", [SEG], KEYS["lb3"])
    assert referee.evidence("lb3", [[claim_raw, lb3_says]], T) == {"lb2"}


def test_forged_reports_are_rejected_whole(referee):
    forger = backup("lb2", fault="forge-reports")
    claim_raw = claimed(engine("lb1"))
    voted(forger, claim_raw)
    [raws] = evidence_of(forger)
    forged = protocol.decode(raws[-1])
    assert forged.author == "lb3" and not protocol.verify(forged, KEYS["lb3"])
    assert referee.evidence("lb2", [raws], T) == set()
    stats = referee.judge.stats
    assert (stats["lb2"].rejected, stats["lb2"].reported) == (1, 0)
    assert all(referee.judge.suspicion(name, T) == 0.0 for name in KEYS)


# --- generations on the wire ---------------------------------------------------------------------

def _old_format_vote(author, statement):
    """A vote as an agent of the previous version signed it (SBV1: no generation)."""
    name = author.encode("ascii")
    body = struct.pack("!4sBBB", b"SBV1", VOTE, len(name), 1) + name + struct.pack(
        "!4sHII16s", statement.client, statement.port, statement.start, statement.end,
        statement.digest)
    return body + protocol.mac(KEYS[author], body)


def test_claims_and_votes_carry_the_replicas_generation():
    p = engine("lb1")
    p.configure(replace(p.config, generation=4))
    claim = claimed(p)
    assert protocol.decode(claim).generation == 4
    b = backup()
    b.configure(replace(b.config, generation=2))
    assert protocol.decode(voted(b, claim)).generation == 2


def test_an_old_format_batch_is_rejected_and_counted_never_raised():
    p = engine("lb1")
    claimed(p)
    assert p.receive(_old_format_vote("lb2", SEG), T) == ()
    assert p.counters["batches_rejected"] == 1 and len(p.pending) == 1
    b = backup()
    b.receive(_old_format_vote("lb1", SEG), T)  # (as a claim, to a backup)
    assert b.counters["batches_rejected"] == 1 and b.counters["votes_cast"] == 0
