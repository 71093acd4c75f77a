"""Tests for generations and abstention in the agent's vote engine (issue 9): a replica that
entered the voting set anew abstains, explicitly, on connections that began before (as backup)
and resets them (as primary); a primary left with fewer than f possible voters on a connection
resets it, or serves it unvoted under ``unvoted = serve``, and never holds it. Real translator
where the connection's generation matters; time is passed in."""

import socket
import types
from dataclasses import replace

import pytest
from scapy.all import IP, TCP

from sbft_ryu import protocol
from sbft_ryu.agent import nfq, vote
from sbft_ryu.agent.active import Translator, shared_values
from sbft_ryu.agent.heartbeat import Answer
from sbft_ryu.agent.own_output import statement_of
from sbft_ryu.protocol import ABSTAIN, CLAIM, NO_DIGEST, VOTE, Statement

from fakes import abstentions_sent, FakeTranslator, QueuedPacket, tcp_packet as packet, Token

NAMES = ("lb1", "lb2", "lb3")
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(NAMES, 1)}
ADDRESSES = {name: f"10.254.0.{n}" for n, name in enumerate(NAMES, 1)}
CLIENT = bytes([10, 0, 0, 31])
VIP, PORT = "10.0.0.100", 5555
SECRET = b"generation-secret"
CLIENT_ISN, OWN_ISN = 5000, 9000
REPLY = b"HTTP/1.0 200 OK\r\n\r\nhi"
M32 = 2**32
T = 10.0
OUT, IN = 4, 0  # the hooks of a packet the replica's stack sends, and of one that arrives




def config(generation, primary="lb1", unvoted="serve", f=1):
    return vote.VoteConfig.of(required=True, f=f, hold_s=0.2, port=5557, peers=ADDRESSES,
                              primary=primary, epoch=3, generation=generation,
                              unvoted=unvoted)


def engine(name, translator, generation=1, **kwargs):
    e = vote.VoteEngine(name, KEYS[name], translator,
                        lambda data, address: e.sent.append((data, address)))
    e.sent = []
    e.configure(config(generation, **kwargs))
    return e


def open_connection(translator, port, now=T):
    """The client's SYN and this replica's SYN-ACK: a connection begun in the translator's
    generation at that moment."""
    client = socket.inet_ntoa(CLIENT)
    translator.process(packet(client, VIP, port, PORT, "S", CLIENT_ISN), None, False, now, True)
    translator.process(packet(VIP, client, PORT, port, "SA", OWN_ISN, CLIENT_ISN + 1), None,
                       False, now)


def stack_reply(translator, port, primary=False, now=T):
    """This replica's stack sends REPLY on the connection: the translated packet's
    statement (as the primary's claim would state it)."""
    client = socket.inet_ntoa(CLIENT)
    raw = packet(VIP, client, PORT, port, "PA", OWN_ISN + 1, CLIENT_ISN + 1, REPLY)
    effects = translator.process(raw, None, primary, now)
    return effects


def claim_for(port, generation=1):
    shared, _ = shared_values(SECRET, CLIENT, port, socket.inet_aton(VIP), PORT, CLIENT_ISN)
    start = (shared + 1) % M32
    statement = Statement(CLIENT, port, start, start + len(REPLY), protocol.digest(REPLY))
    return protocol.encode(CLAIM, "lb1", [statement], KEYS["lb1"], generation), statement


# --- a backup readmitted (a new generation) -------------------------------------------------

def readmitted_backup():
    """lb2 whose stack served connection 40000 in generation 1; then readmitted (generation
    2: the agent stamps later connections with it) and opened 40001."""
    translator = Translator(SECRET, PORT)
    translator.generation = 1
    open_connection(translator, 40000)
    stack_reply(translator, 40000)
    translator.generation = 2
    b2 = engine("lb2", translator.own_output, generation=2)
    open_connection(translator, 40001)
    stack_reply(translator, 40001)
    return translator, b2


def test_a_readmitted_backup_abstains_on_connections_older_than_its_generation():
    _, b2 = readmitted_backup()
    old_claim, old = claim_for(40000)
    b2.receive(old_claim, T + 1)
    b2.flush()
    # its stack did produce those bytes (it would vote), but not as the replica it is now
    assert [s.range_key for s in abstentions_sent(b2)] == [old.range_key]
    assert b2.counters["abstentions"] == 1 and b2.counters["votes_cast"] == 0
    assert list(b2.reports) == []
    [batch] = [protocol.decode(data) for data, _ in b2.sent]
    assert batch.generation == 2


def test_a_readmitted_backup_votes_on_connections_opened_after_its_readmission():
    _, b2 = readmitted_backup()
    new_claim, new = claim_for(40001)
    b2.receive(new_claim, T + 1)
    b2.flush()
    [(data, address)] = b2.sent
    batch = protocol.decode(data)
    assert (batch.kind, batch.generation, address[0]) == (VOTE, 2, ADDRESSES["lb1"])
    assert batch.statements == (new,)  # the same digest: agreement


def test_a_readmitted_backup_reports_nothing_of_old_connections_wire():
    _, b2 = readmitted_backup()
    _, old = claim_for(40000)
    lie = Statement(old.client, old.port, old.start, old.end, protocol.digest(b"other"))
    b2.on_wire(lie, T + 1)
    assert b2.counters["wire_divergent"] == 0 and list(b2.reports) == []
    assert b2.sent == []  # (a wire copy needs no answer)


def test_a_connection_of_unknown_generation_is_answered_as_before():
    b2 = engine("lb2", FakeTranslator({claim_for(40000)[1].range_key: (REPLY, False)}),
                generation=5)
    b2.receive(claim_for(40000)[0], T)
    b2.flush()
    assert b2.counters["votes_cast"] == 1 and b2.counters["abstentions"] == 0


# --- the primary counts the voters still possible -------------------------------------------

def abstention(author, statement, generation=1):
    blank = Statement(statement.client, statement.port, statement.start, statement.end,
                      NO_DIGEST)
    return protocol.encode(ABSTAIN, author, [blank], KEYS[author], generation)


SEG = Statement(CLIENT, 40000, 1000, 1000 + len(REPLY), protocol.digest(REPLY))


def test_one_abstention_of_two_leaves_the_claim_held_for_the_other_backup():
    p = engine("lb1", FakeTranslator())
    token = Token()
    assert p.hold(token, b"payload", SEG, T) == (True, ())
    assert p.receive(abstention("lb2", SEG), T) == []
    assert p.possible_voters((CLIENT, 40000)) == ["lb3"]
    assert p.resets == [] and len(p.pending) == 1
    released = p.receive(protocol.encode(VOTE, "lb3", [SEG], KEYS["lb3"], 1), T)
    assert released == [(token, b"payload")] and p.counters["released_voted"] == 1


def test_too_few_possible_voters_reset_the_connection_under_unvoted_stop():
    p = engine("lb1", FakeTranslator(), unvoted="stop")
    token = Token()
    p.hold(token, b"payload", SEG, T)
    p.receive(abstention("lb2", SEG), T)
    assert p.receive(abstention("lb3", SEG), T + 0.01) == []
    assert p.resets == [(CLIENT, 40000)] and p.pending == {}
    assert p.counters["unvotable_resets"] == 1 and p.counters["abstentions_received"] == 2
    assert p.expire(T + 0.02) == [token]  # dropped at once, not after the hold
    later = Token()
    assert p.hold(later, b"more", Statement(CLIENT, 40000, 1022, 1030, SEG.digest),
                  T + 0.03) == (True, (later,))  # nothing of it leaves
    assert p.counters["claims"] == 1


def test_while_replies_are_voted_unvoted_serve_still_resets_a_connection_without_voters():
    """The backups abstain where the client acknowledged bytes they never voted on (sent past
    the vote): serving the rest unvoted would splice honest bytes onto unchecked ones."""
    p = engine("lb1", FakeTranslator(), unvoted="serve")
    token = Token()
    p.hold(token, b"payload", SEG, T)
    p.receive(abstention("lb2", SEG), T)
    assert p.receive(abstention("lb3", SEG), T) == []
    assert p.resets == [(CLIENT, 40000)] and p.counters["released_unvoted"] == 0
    assert p.expire(T + 0.01) == [token]


def test_when_the_tier_stops_voting_unvoted_serve_serves_such_a_connection_unvoted():
    p = engine("lb1", FakeTranslator(), unvoted="serve")
    p.hold(Token(), b"payload", SEG, T)
    p.receive(abstention("lb2", SEG), T)
    p.receive(abstention("lb3", SEG), T)
    p.configure(replace(p.config, required=False))  # below f + 1 members now
    assert p.hold(Token(), b"more", Statement(CLIENT, 40000, 1022, 1030, SEG.digest),
                  T + 0.5) == (False, ())
    assert p.counters["released_unvoted"] == 1


def test_abstentions_from_strangers_or_of_the_old_format_change_nothing():
    p = engine("lb1", FakeTranslator(), unvoted="stop")
    p.hold(Token(), b"payload", SEG, T)
    stranger = protocol.encode(ABSTAIN, "lb9", [SEG], b"9" * 16)
    p.receive(stranger, T)
    p.receive(b"SBV1" + bytes(40), T)
    assert p.counters["batches_rejected"] == 2 and p.possible_voters((CLIENT, 40000)) == [
        "lb2", "lb3"]


def test_the_primary_forgets_abstentions_after_a_while():
    p = engine("lb1", FakeTranslator())
    p.receive(abstention("lb2", SEG), T)
    p.expire(T + vote.ABSTAINED_S + 0.1)
    assert p.abstained == {} and p.possible_voters((CLIENT, 40000)) == ["lb2", "lb3"]


# --- a primary resets connections older than its generation ---------------------------------

def primary_queue(generation_then, generation_now):
    """lb1 as primary; connection 40000 began in ``generation_then``, 40001 in
    ``generation_now``, its current one."""
    translator = Translator(SECRET, PORT)
    translator.generation = generation_then
    e = engine("lb1", translator.own_output, generation=generation_now)
    sent = []
    state = types.SimpleNamespace(primary=True)
    queue = nfq.ActiveQueue(state, translator, None, sent.append, e, None)
    client = socket.inet_ntoa(CLIENT)
    for port in (40000, 40001):
        if port == 40001:
            translator.generation = generation_now
        for payload, hook in (
                (packet(client, VIP, port, PORT, "S", CLIENT_ISN), IN),
                (packet(VIP, client, PORT, port, "SA", OWN_ISN, CLIENT_ISN + 1), OUT),
                (packet(client, VIP, port, PORT, "A", CLIENT_ISN + 1, 0), IN)):
            queue.callback(QueuedPacket(payload, hook))
    sent.clear()
    return queue, sent


def reply(port):
    client = socket.inet_ntoa(CLIENT)
    return QueuedPacket(packet(VIP, client, PORT, port, "PA", OWN_ISN + 1, CLIENT_ISN + 1,
                               REPLY), OUT)


def test_a_readmitted_primary_resets_connections_older_than_its_generation(clock):
    queue, sent = primary_queue(1, 2)
    old = reply(40000)
    queue.callback(old)
    assert old.calls == [("drop",)]  # its reply there never leaves
    queue.tick(clock[0])
    [rst] = sent
    assert IP(rst)[TCP].flags == "R" and IP(rst)[TCP].dport == 40000
    assert queue.snapshot()["stale_generation_resets"] == 1
    new = reply(40001)
    queue.callback(new)
    assert new.calls == [] and queue.vote.counters["claims"] == 1  # held for the votes
    queue.tick(clock[0] + 0.1)
    assert len(sent) == 1  # one RST, once


def test_a_primary_in_the_generation_its_connections_began_in_continues_them(clock):
    queue, sent = primary_queue(2, 2)
    queue.callback(reply(40000))
    queue.tick(clock[0])
    assert sent == [] and queue.vote.counters["claims"] == 1


def test_a_promoted_backup_resets_rather_than_replays_pre_readmission_connections(clock):
    translator = Translator(SECRET, PORT)
    translator.generation = 1
    open_connection(translator, 40000)
    stack_reply(translator, 40000)  # unacknowledged: a new primary would replay it
    translator.generation = 2
    e = engine("lb2", translator.own_output, generation=2, primary="lb2")
    sent = []
    state = types.SimpleNamespace(primary=False)
    queue = nfq.ActiveQueue(state, translator, None, sent.append, e, None)
    state.primary = True  # promoted
    queue.tick(clock[0])
    [rst] = sent
    assert IP(rst)[TCP].flags == "R" and IP(rst)[TCP].dport == 40000
    assert statement_of(rst) is None  # no data of the old connection went out


# --- the heartbeat answer ---------------------------------------------------------------------

def test_the_answer_carries_the_generation_and_the_unvoted_policy():
    answer = Answer.parse({"role": "backup", "primary": "lb1", "epoch": 4, "voting": {
        "required": True, "f": 1, "peers": ADDRESSES, "generation": 3, "unvoted": "stop"}})
    assert (answer.voting.generation, answer.voting.unvoted) == (3, "stop")
    default = Answer.parse({"role": "backup", "voting": {"required": True}})
    assert (default.voting.generation, default.voting.unvoted) == (0, "serve")
    with pytest.raises(ValueError):
        Answer.parse({"role": "backup", "voting": {"generation": -1}})
