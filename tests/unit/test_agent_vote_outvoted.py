"""More tests for sbft_ryu.agent.vote.VoteEngine: a primary outvoted by n - f backups records
the connection once and resets it after OUTVOTED_RESET_S only while still primary (and the
queue sends the RST); a backup's partial votes wait for its stack to be quiet for the patience;
abstentions cast no vote. Fake or real translator, time passed in."""

import socket
import types

import pytest
from scapy.all import IP, TCP

from sbft_ryu import protocol
from sbft_ryu.agent import nfq, vote
from sbft_ryu.agent.active import Translator, shared_values
from sbft_ryu.agent.own_output import ABSTAIN
from sbft_ryu.protocol import VOTE, Statement

from fakes import abstentions_sent, FakeTranslator, QueuedPacket, tcp_packet as packet, Token

NAMES = ("lb1", "lb2", "lb3", "lb4", "lb5")
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(NAMES, 1)}
ADDRESSES = {name: f"10.254.0.{n}" for n, name in enumerate(NAMES, 1)}
THREE = {name: ADDRESSES[name] for name in NAMES[:3]}
CLIENT = bytes([10, 0, 0, 31])
REPLY = b"HTTP/1.0 200 OK\r\n\r\nhi"
OTHER = protocol.digest(b"HTTP/1.0 200 OK\r\n\r\nXX")
THIRD = protocol.digest(b"HTTP/1.0 200 OK\r\n\r\nYY")
HOLD = 0.2
T = 10.0


def segment(data=REPLY, start=1000, port=40000):
    return Statement(CLIENT, port, start, start + len(data), protocol.digest(data))


SEG = segment()


def engine(name, primary="lb1", peers=THREE, f=1, translator=None, hold_s=HOLD):
    e = vote.VoteEngine(name, KEYS[name], translator or FakeTranslator(),
                        lambda data, address: e.sent.append((data, address)))
    e.sent = []
    e.configure(vote.VoteConfig.of(required=True, f=f, hold_s=hold_s, port=5557, peers=peers,
                                   primary=primary, epoch=3))
    return e


def claimed(p, seg=SEG, now=T):
    assert p.hold(Token(), b"payload", seg, now) == (True, ())
    p.flush()
    raw = protocol.decode(p.sent[0][0]).raw
    p.sent.clear()
    return raw


def vote_of(author, seg=SEG, value=None):
    statement = seg if value is None else Statement(seg.client, seg.port, seg.start, seg.end,
                                                    value)
    return protocol.encode(VOTE, author, [statement], KEYS[author])


# --- an outvoted primary ---------------------------------------------------------------------

def test_the_connection_is_recorded_once_when_every_backup_votes_another_digest():
    p = engine("lb1")
    claimed(p)
    p.receive(vote_of("lb2", value=OTHER), T)
    assert p.outvoted == {} and p.counters["outvoted"] == 0  # one backup may be a minority
    p.receive(vote_of("lb3", value=OTHER), T + 0.05)
    assert p.outvoted == {(CLIENT, 40000): T + 0.05} and p.counters["outvoted"] == 1
    p.receive(vote_of("lb3", value=OTHER), T + 0.1)  # the same votes again
    second = segment(start=1000 + len(REPLY))  # and the next range of the connection
    claimed(p, second, T + 0.1)
    for name in ("lb2", "lb3"):
        p.receive(vote_of(name, second, OTHER), T + 0.2)
    assert p.outvoted == {(CLIENT, 40000): T + 0.05} and p.counters["outvoted"] == 1
    assert p.resets == []


def test_each_outvoted_connection_is_recorded_and_reset_once():
    p = engine("lb1")
    other_conn = segment(port=40001)
    for seg in (SEG, other_conn):
        claimed(p, seg)
        for name in ("lb2", "lb3"):
            p.receive(vote_of(name, seg, OTHER), T)
    assert p.counters["outvoted"] == 2
    p.expire(T + vote.OUTVOTED_RESET_S)
    assert sorted(p.resets) == [(CLIENT, 40000), (CLIENT, 40001)]
    assert p.counters["outvoted_resets"] == 2 and p.outvoted == {}
    p.expire(T + 10 * vote.OUTVOTED_RESET_S)
    assert len(p.resets) == 2 and p.counters["outvoted_resets"] == 2  # once each


def test_backups_disagreeing_among_themselves_do_not_outvote():
    p = engine("lb1")
    claimed(p)
    p.receive(vote_of("lb2", value=OTHER), T)
    p.receive(vote_of("lb3", value=THIRD), T)
    assert p.outvoted == {} and p.counters["outvoted"] == 0
    assert p.counters["divergent_votes"] == 2


def test_a_released_claim_is_not_outvoted_by_a_late_dissent():
    p = engine("lb1")
    claimed(p)
    assert len(p.receive(vote_of("lb2"), T)) == 1  # released on f = 1 agreeing vote
    p.receive(vote_of("lb3", value=OTHER), T)
    assert p.outvoted == {} and p.counters["outvoted"] == 0


def test_a_released_claim_is_not_outvoted_even_when_a_backup_changes_its_vote():
    """The bytes went out on lb2's agreeing vote; lb2 then says otherwise (an equivocating
    backup) and lb3 agrees with it: every backup's latest vote is against the claim, but a
    released range is never the reason for a reset."""
    p = engine("lb1")
    claimed(p)
    assert len(p.receive(vote_of("lb2"), T)) == 1
    p.receive(vote_of("lb2", value=OTHER), T + 0.01)
    p.receive(vote_of("lb3", value=OTHER), T + 0.02)
    assert p.counters["divergent_votes"] == 2
    assert p.outvoted == {} and p.counters["outvoted"] == 0
    p.expire(T + 2 * vote.OUTVOTED_RESET_S)
    assert p.resets == []


def test_with_five_replicas_three_backups_must_agree():
    """n = 5, f = 2: n - f = 3 of the 4 backups on one other digest outvote the primary."""
    p = engine("lb1", peers=ADDRESSES, f=2)
    claimed(p)
    p.receive(vote_of("lb2", value=OTHER), T)
    p.receive(vote_of("lb3", value=OTHER), T)
    assert p.counters["outvoted"] == 0  # two of four: not every honest backup
    p.receive(vote_of("lb4", value=THIRD), T)
    assert p.counters["outvoted"] == 0
    p.receive(vote_of("lb5", value=OTHER), T)
    assert p.counters["outvoted"] == 1 and list(p.outvoted) == [(CLIENT, 40000)]


def test_a_primary_demoted_before_the_reset_time_does_not_reset():
    p = engine("lb1")
    claimed(p)
    for name in ("lb2", "lb3"):
        p.receive(vote_of(name, value=OTHER), T)
    p.configure(vote.VoteConfig.of(required=True, f=1, hold_s=HOLD, port=5557, peers=THREE,
                                   primary="lb2", epoch=4))
    p.expire(T + vote.OUTVOTED_RESET_S)
    assert p.resets == [] and p.counters["outvoted_resets"] == 0
    assert p.outvoted == {}  # forgotten: a later promotion does not reset it either
    p.configure(vote.VoteConfig.of(required=True, f=1, hold_s=HOLD, port=5557, peers=THREE,
                                   primary="lb1", epoch=5))
    p.expire(T + 2 * vote.OUTVOTED_RESET_S)
    assert p.resets == []


def test_the_outvoted_time_runs_from_the_deciding_vote_not_the_claim():
    p = engine("lb1")
    claimed(p)
    p.receive(vote_of("lb2", value=OTHER), T)
    p.receive(vote_of("lb3", value=OTHER), T + 0.15)
    p.expire(T + vote.OUTVOTED_RESET_S + 0.1)
    assert p.resets == []
    p.expire(T + 0.15 + vote.OUTVOTED_RESET_S)
    assert p.resets == [(CLIENT, 40000)]


# --- the queue sends the RSTs of vote.resets --------------------------------------------------

M32 = 2**32
VIP, PORT = "10.0.0.100", 5555
SECRET = b"outvoted-queue-secret"
CLIENT_ISN = 5000
SHARED, _ = shared_values(SECRET, CLIENT, 40000, socket.inet_aton(VIP), PORT, CLIENT_ISN)




def primary_queue(client_ack):
    """A primary's queue with one connection whose client acknowledged ``client_ack``."""
    translator = Translator(SECRET, PORT)
    e = engine("lb1", translator=translator.own_output)
    sent = []
    queue = nfq.ActiveQueue(types.SimpleNamespace(primary=True), translator, None, sent.append,
                            e, None)
    client = socket.inet_ntoa(CLIENT)
    for payload, hook in (
            (packet(client, VIP, 40000, PORT, "S", CLIENT_ISN), 0),
            (packet(VIP, client, PORT, 40000, "SA", 777, CLIENT_ISN + 1), 4),
            (packet(client, VIP, 40000, PORT, "A", CLIENT_ISN + 1, client_ack), 0)):
        queue.callback(QueuedPacket(payload, hook))
    return queue, sent


def test_tick_sends_a_rst_for_each_connection_in_vote_resets(clock):
    queue, sent = primary_queue(SHARED + 1)
    queue.vote.resets = [(CLIENT, 40000), (CLIENT, 1)]  # the second is unknown here
    queue.tick(clock[0])
    [rst] = sent
    assert IP(rst)[TCP].flags == "R" and IP(rst)[TCP].dport == 40000
    assert IP(rst)[TCP].seq == (SHARED + 1) % M32  # the client's latest ACK
    assert queue.vote.resets == []
    queue.tick(clock[0] + 0.1)
    assert len(sent) == 1  # taken: sent once


def test_an_outvoted_connection_is_reset_by_the_queue_and_its_stack_silenced(clock):
    queue, sent = primary_queue(SHARED + 1)
    e = queue.vote
    e.hold(Token(), b"payload", SEG, clock[0])
    e.receive(vote_of("lb2", value=OTHER), clock[0])
    e.receive(vote_of("lb3", value=OTHER), clock[0])
    queue.tick(clock[0] + vote.OUTVOTED_RESET_S / 2)
    assert sent == []
    queue.tick(clock[0] + vote.OUTVOTED_RESET_S)
    assert [IP(raw)[TCP].flags for raw in sent] == ["R"]
    assert queue.snapshot()["outvoted_resets"] == 1
    client = socket.inet_ntoa(CLIENT)
    late = QueuedPacket(packet(VIP, client, PORT, 40000, "PA", 778, CLIENT_ISN + 1, b"x"), 4)
    queue.callback(late)
    assert late.calls == [("drop",)]  # what its stack still sends never reaches the client


# --- partial votes wait for a quiet stack ---------------------------------------------------

def test_no_partial_vote_while_the_stack_has_been_quiet_for_less_than_the_patience():
    translator = FakeTranslator(partial={SEG.range_key: (REPLY[:5], False)},
                                quiet=vote.PARTIAL_QUIET_S - 0.01)
    b2 = engine("lb2", translator=translator)
    b2.receive(claimed(engine("lb1")), T)
    b2.expire(T + vote.PARTIAL_QUIET_S + 2 * HOLD)  # old enough, but its stack was busy
    assert b2.counters["partial_votes"] == 0 and len(b2.waiting) == 1
    translator.quiet = vote.PARTIAL_QUIET_S
    b2.expire(T + vote.PARTIAL_QUIET_S + 2 * HOLD + 0.01)
    assert b2.counters["partial_votes"] == 1 and b2.waiting == {}


@pytest.mark.parametrize("hold_s", [0.2, 1.5])
def test_the_patience_is_the_longer_of_the_hold_and_partial_quiet_s(hold_s):
    patience = max(hold_s, vote.PARTIAL_QUIET_S)
    translator = FakeTranslator(partial={SEG.range_key: (REPLY[:5], False)}, quiet=patience)
    b2 = engine("lb2", translator=translator, hold_s=hold_s)
    b2.receive(claimed(engine("lb1")), T)
    b2.expire(T + patience - 0.01)
    assert b2.counters["partial_votes"] == 0
    b2.expire(T + patience)
    assert b2.counters["partial_votes"] == 1 and b2.counters["votes_cast"] == 1


def test_a_partial_question_answered_with_none_is_unanswerable_not_requeued():
    translator = FakeTranslator(quiet=float("inf"))  # None for every question
    b2 = engine("lb2", translator=translator)
    b2.receive(claimed(engine("lb1")), T)
    b2.expire(T + vote.PARTIAL_QUIET_S)
    assert b2.counters["claims_unanswerable"] == 1 and b2.waiting == {}
    assert [partial for _, partial in translator.asked] == [False, True]
    assert b2.votes_out == []


# with the real translator: a backup's stack that sent part of the claimed range

R_SECRET = b"partial-quiet-secret"
R_VIP = socket.inet_aton("10.0.0.100")
R_SHARED, _ = shared_values(R_SECRET, CLIENT, 40000, R_VIP, PORT, CLIENT_ISN)
OWN_ISN = 9000


def real_backup(now):
    """lb2 with a real translator whose stack sent the first 5 bytes of REPLY at ``now``."""
    tr = Translator(R_SECRET, PORT)
    client = socket.inet_ntoa(CLIENT)
    tr.process(packet(client, "10.0.0.100", 40000, PORT, "S", CLIENT_ISN), None, False, now)
    tr.process(packet("10.0.0.100", client, PORT, 40000, "SA", OWN_ISN, CLIENT_ISN + 1), None,
               False, now)
    stack_sends(tr, 0, REPLY[:5], now)
    return tr, engine("lb2", translator=tr.own_output)


def stack_sends(tr, offset, data, now):
    client = socket.inet_ntoa(CLIENT)
    tr.process(packet("10.0.0.100", client, PORT, 40000, "PA", OWN_ISN + 1 + offset,
                      CLIENT_ISN + 1, data), None, False, now)


def real_claim(data=REPLY):
    start = (R_SHARED + 1) % M32
    return protocol.encode(protocol.CLAIM, "lb1", [Statement(CLIENT, 40000, start,
                                                         start + len(data),
                                                         protocol.digest(data))], KEYS["lb1"])


def test_a_real_backup_votes_partially_only_once_its_stack_was_quiet_long_enough():
    tr, b2 = real_backup(T)
    b2.receive(real_claim(), T)
    assert len(b2.waiting) == 1  # its stack sent 5 of the claimed bytes
    b2.expire(T + vote.PARTIAL_QUIET_S - 0.01)
    assert b2.counters["partial_votes"] == 0
    stack_sends(tr, 5, REPLY[5:9], T + 0.5)  # it is still producing the reply
    b2.on_own_output((CLIENT, 40000), T + 0.5)  # (the queue does this): still not all
    b2.expire(T + vote.PARTIAL_QUIET_S + 0.01)  # the claim is old enough; the stack is not
    assert b2.counters["partial_votes"] == 0 and len(b2.waiting) == 1
    b2.expire(T + 0.5 + vote.PARTIAL_QUIET_S)
    assert b2.counters["partial_votes"] == 1 and b2.waiting == {}
    [(statement, claim_raw)] = b2.votes_out
    assert statement.digest == protocol.digest(REPLY[:9])  # what its stack sent, 9 bytes
    assert claim_raw == real_claim()  # divergent: evidence at the flush


def test_a_real_backup_whose_own_proxy_aborted_abstains_instead_of_a_partial_vote():
    """Its stack sent 5 bytes, then a RST (its proxy aborted): an omission, not other bytes,
    so no divergent partial vote accuses the primary."""
    tr, b2 = real_backup(T)
    client = socket.inet_ntoa(CLIENT)
    tr.process(packet("10.0.0.100", client, PORT, 40000, "RA", OWN_ISN + 6, CLIENT_ISN + 1),
               None, False, T)
    b2.receive(real_claim(), T)
    assert len(b2.waiting) == 1  # a whole answer still waits, as for any missing bytes
    b2.expire(T + max(HOLD, vote.PARTIAL_QUIET_S))
    assert b2.counters["abstentions"] == 1
    assert (b2.counters["partial_votes"], b2.counters["votes_cast"]) == (0, 0)
    assert b2.waiting == {} and b2.votes_out == []


def test_a_real_backup_that_sent_the_whole_range_before_its_rst_still_votes():
    tr, b2 = real_backup(T)
    stack_sends(tr, 5, REPLY[5:], T)
    client = socket.inet_ntoa(CLIENT)
    tr.process(packet("10.0.0.100", client, PORT, 40000, "RA", OWN_ISN + 1 + len(REPLY),
                      CLIENT_ISN + 1), None, False, T)
    b2.receive(real_claim(), T)
    [(statement, evidence)] = b2.votes_out
    assert statement.digest == protocol.digest(REPLY) and evidence is None  # agreement


def test_a_real_backup_that_never_took_part_abstains_after_the_patience():
    b2 = engine("lb2", translator=Translator(R_SECRET, PORT).own_output)  # joined after the SYN
    b2.receive(real_claim(), T)
    assert len(b2.waiting) == 1  # its SYN may still be queued: wait
    b2.expire(T + max(HOLD, vote.PARTIAL_QUIET_S))
    assert b2.counters["abstentions"] == 1 and b2.counters["votes_cast"] == 0
    assert b2.waiting == {} and b2.votes_out == []


# --- abstentions ---------------------------------------------------------------------------

def test_a_waiting_claim_abstains_when_the_range_was_acknowledged_meanwhile():
    translator = FakeTranslator()
    b2 = engine("lb2", translator=translator)
    b2.receive(claimed(engine("lb1")), T)
    assert len(b2.waiting) == 1
    translator.own[SEG.range_key] = ABSTAIN  # the client acknowledged it: trimmed
    b2.on_own_output((CLIENT, 40000), T + 0.1)
    b2.flush()
    assert [s.range_key for s in abstentions_sent(b2)] == [SEG.range_key]  # no vote
    assert b2.counters["abstentions"] == 1 and b2.waiting == {}
    assert list(b2.reports) == []


def test_a_partial_abstention_casts_no_vote():
    b2 = engine("lb2", translator=FakeTranslator(partial={SEG.range_key: ABSTAIN},
                                                 quiet=float("inf")))
    b2.receive(claimed(engine("lb1")), T)
    b2.expire(T + max(HOLD, vote.PARTIAL_QUIET_S))
    b2.flush()
    assert [s.range_key for s in abstentions_sent(b2)] == [SEG.range_key]  # no vote
    assert b2.counters["abstentions"] == 1
    assert (b2.counters["partial_votes"], b2.counters["votes_cast"]) == (0, 0)


def test_a_wire_copy_of_a_range_the_backup_abstains_on_is_not_reported():
    b2 = engine("lb2", translator=FakeTranslator({SEG.range_key: ABSTAIN}))
    b2.on_wire(SEG, T)
    assert b2.counters["wire_checked"] == 1 and b2.counters["abstentions"] == 1
    assert b2.counters["wire_divergent"] == 0 and list(b2.reports) == []
