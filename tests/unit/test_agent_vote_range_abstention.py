"""Tests for abstentions that name their reason (issue 9): a backup abstains on one range when
the client acknowledged it and every byte of it was checked equal to its own, and on the whole
connection when the client holds bytes it never checked or found different (it is then
*unsure* of the connection, and resets it should it become primary). A primary releases a range
the client already has (a harmless duplicate), drops a range nobody can vote on any more, and
resets nothing for either. Time is passed in."""

from dataclasses import replace

from sbft_ryu import protocol
from sbft_ryu.agent import vote
from sbft_ryu.agent.own_output import ACKNOWLEDGED, PARTLY_ACKNOWLEDGED
from sbft_ryu.protocol import ABSTAIN, VOTE, Statement

from fakes import FakeTranslator, Token

NAMES = ("lb1", "lb2", "lb3")
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(NAMES, 1)}
ADDRESSES = {name: f"10.254.0.{n}" for n, name in enumerate(NAMES, 1)}
CLIENT = bytes([10, 0, 0, 31])
CONN = (CLIENT, 40000)
REPLY = b"HTTP/1.0 200 OK\r\n\r\nhi"
T = 10.0
SEG = Statement(CLIENT, 40000, 1000, 1000 + len(REPLY), protocol.digest(REPLY))
NEXT = Statement(CLIENT, 40000, SEG.end, SEG.end + 4, protocol.digest(b"more"))


def engine(name, translator, peers=NAMES, primary="lb1"):
    e = vote.VoteEngine(name, KEYS[name], translator,
                        lambda data, address: e.sent.append((data, address)))
    e.sent = []
    e.configure(vote.VoteConfig.of(required=True, f=1, hold_s=0.2, port=5557,
                                   peers={n: ADDRESSES[n] for n in peers}, primary=primary,
                                   epoch=3, generation=1, unvoted="serve"))
    return e


def claim_batch(*statements):
    return protocol.encode(protocol.CLAIM, "lb1", list(statements), KEYS["lb1"], 1)


def abstention(author, statement, reason):
    said = Statement(statement.client, statement.port, statement.start, statement.end, reason)
    return protocol.encode(ABSTAIN, author, [said], KEYS[author], 1)


def abstentions_of(backup):
    """The (range, reason) of every abstention a backup sent (flushed)."""
    backup.flush()
    out = []
    for data, _ in backup.sent:
        batch = protocol.decode(data)
        if batch.kind == ABSTAIN:
            out.extend((s.start, s.end, s.digest) for s in batch.statements)
    return out


# --- the backup: which reason ---------------------------------------------------------------

def test_a_range_the_client_has_and_the_backup_checked_is_abstained_on_alone():
    translator = FakeTranslator({SEG.range_key: (REPLY, False)})
    b2 = engine("lb2", translator)
    b2.on_wire(SEG, T)  # the primary's bytes on the wire: equal to ours
    assert b2.verified[CONN][0] == SEG.end
    translator.own[SEG.range_key] = ACKNOWLEDGED  # later the client acknowledged them
    b2.receive(claim_batch(SEG), T + 0.1)  # a new primary's replay of the range
    assert abstentions_of(b2) == [(SEG.start, SEG.end, protocol.ABSTAIN_DELIVERED)]
    assert CONN not in b2.unsure


def test_a_range_the_client_has_in_part_is_abstained_on_alone():
    translator = FakeTranslator({SEG.range_key: (REPLY, False)})
    b2 = engine("lb2", translator)
    b2.on_wire(SEG, T)
    translator.own[SEG.range_key] = PARTLY_ACKNOWLEDGED
    b2.receive(claim_batch(SEG), T + 0.1)
    assert abstentions_of(b2) == [(SEG.start, SEG.end, protocol.ABSTAIN_RANGE)]


def test_bytes_the_client_has_but_nobody_here_checked_make_the_backup_unsure():
    translator = FakeTranslator({SEG.range_key: ACKNOWLEDGED, NEXT.range_key: (b"more", False)})
    b2 = engine("lb2", translator)
    b2.receive(claim_batch(SEG), T)
    assert abstentions_of(b2) == [(SEG.start, SEG.end, protocol.ABSTAIN_CONNECTION)]
    assert CONN in b2.unsure and b2.counters["unsure_connections"] == 1
    b2.sent.clear()
    b2.receive(claim_batch(NEXT), T + 0.1)  # it could vote, but the connection is spliced
    assert abstentions_of(b2) == [(NEXT.start, NEXT.end, protocol.ABSTAIN_CONNECTION)]
    assert b2.counters["votes_cast"] == 0


def test_a_divergent_wire_copy_makes_the_backup_unsure_but_it_keeps_comparing():
    translator = FakeTranslator({SEG.range_key: (b"HTTP/1.0 200 OK\r\n\r\nho", False),
                                 NEXT.range_key: (b"MORE", False)})
    b2 = engine("lb2", translator)
    b2.on_wire(SEG, T)
    assert CONN in b2.unsure and b2.counters["wire_divergent"] == 1
    b2.on_wire(NEXT, T + 0.01)  # every divergent range is evidence
    assert b2.counters["wire_divergent"] == 2 and len(b2.take_reports(10)) == 2
    b2.receive(claim_batch(NEXT), T + 0.02)
    assert abstentions_of(b2) == [(NEXT.start, NEXT.end, protocol.ABSTAIN_CONNECTION)]


def test_the_backup_forgets_what_it_verified_and_was_unsure_of_after_a_while():
    b2 = engine("lb2", FakeTranslator({SEG.range_key: (b"other", False)}))
    b2.on_wire(SEG, T)
    assert CONN in b2.unsure
    b2.expire(T + vote.ABSTAINED_S + 0.1)
    assert b2.unsure == {} and b2.verified == {}


# --- the primary: what each reason does -------------------------------------------------------

def test_a_range_the_client_already_has_is_released_as_a_harmless_duplicate():
    p = engine("lb1", FakeTranslator(), peers=("lb1", "lb2"))  # f + 1 up: one peer
    token = Token()
    assert p.hold(token, b"payload", SEG, T) == (True, ())
    released = p.receive(abstention("lb2", SEG, protocol.ABSTAIN_DELIVERED), T)
    assert released == [(token, b"payload")]
    assert p.counters["released_delivered"] == 1 and p.resets == [] and p.pending == {}
    assert p.possible_voters(CONN) == ["lb2"]  # it still votes on the rest


def test_a_range_nobody_can_vote_on_any_more_is_dropped_without_a_reset():
    p = engine("lb1", FakeTranslator(), peers=("lb1", "lb2"))
    token = Token()
    p.hold(token, b"payload", SEG, T)
    assert p.receive(abstention("lb2", SEG, protocol.ABSTAIN_RANGE), T) == []
    assert p.expire(T + 0.01) == [token]  # dropped at once: the stack resends from the ACK
    assert p.resets == [] and p.counters["range_drops"] == 1
    later = Token()
    assert p.hold(later, b"more", NEXT, T + 0.02) == (True, ())  # the rest is voted


def test_a_range_abstention_waits_for_another_backup_that_may_still_vote():
    p = engine("lb1", FakeTranslator())
    token = Token()
    p.hold(token, b"payload", SEG, T)
    assert p.receive(abstention("lb2", SEG, protocol.ABSTAIN_RANGE), T) == []
    assert len(p.pending) == 1 and p.dropped == []
    released = p.receive(protocol.encode(VOTE, "lb3", [SEG], KEYS["lb3"], 1), T)
    assert released == [(token, b"payload")]


def test_a_delivered_statement_and_a_vote_add_up_under_f_two():
    names = ("lb1", "lb2", "lb3", "lb4", "lb5")
    keys = {**KEYS, "lb4": b"\x04" * 16, "lb5": b"\x05" * 16}
    p = vote.VoteEngine("lb1", keys["lb1"], FakeTranslator(), lambda *_: None)
    p.configure(vote.VoteConfig.of(required=True, f=2, peers={n: n for n in names},
                                   primary="lb1", generation=1))
    token = Token()
    p.hold(token, b"payload", SEG, T)
    said = Statement(CLIENT, 40000, SEG.start, SEG.end, protocol.ABSTAIN_DELIVERED)
    assert p.receive(protocol.encode(ABSTAIN, "lb2", [said], keys["lb2"], 1), T) == []
    assert p.receive(protocol.encode(VOTE, "lb3", [SEG], keys["lb3"], 1), T) == [
        (token, b"payload")]


def test_an_abstention_of_an_unknown_reason_counts_for_the_whole_connection():
    p = engine("lb1", FakeTranslator())
    p.hold(Token(), b"payload", SEG, T)
    p.receive(abstention("lb2", SEG, bytes([9]) + bytes(15)), T)
    assert p.possible_voters(CONN) == ["lb3"]


def test_a_primary_resets_a_connection_it_was_unsure_of_as_backup():
    p = engine("lb2", FakeTranslator({SEG.range_key: (b"other bytes", False)}))
    p.on_wire(SEG, T)  # as backup: the client got bytes other than ours
    p.configure(replace(p.config, primary="lb2"))  # promoted
    token = Token()
    assert p.hold(token, b"ours", NEXT, T + 0.5) == (True, (token,))
    assert p.resets == [CONN] and p.counters["unsure_resets"] == 1
    assert p.counters["claims"] == 0
