"""A client port comes round again: what the vote engine learnt of a connection is not about the
next one on the same (client, port). Under a steady load of short connections Linux hands the
same client port out again within seconds (seen in the lab: the same port 8 s later), while
the engine remembers a connection for ABSTAINED_S. A backup that was unsure of the earlier one
abstained on the new one, and its primary reset it (an honest request failed in
test_voting_lab.py). Also: an abstention that answers no claim of this primary (a claim of the
primary before it, answered late) changes nothing; and the stack's socket of the earlier
connection is reset before the new SYN reaches it. Real translator, real queue; time passed
in."""

import socket
import types

from scapy.all import IP, TCP

from sbft_ryu import protocol
from sbft_ryu.agent import nfq, vote
from sbft_ryu.agent.active import Translator, shared_values
from sbft_ryu.protocol import ABSTAIN, CLAIM, NO_DIGEST, VOTE, Statement

from fakes import abstentions_sent, QueuedPacket, tcp_packet as packet, Token

NAMES = ("lb1", "lb2", "lb3")
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(NAMES, 1)}
ADDRESSES = {name: f"10.254.0.{n}" for n, name in enumerate(NAMES, 1)}
CLIENT = bytes([10, 0, 0, 31])
CLIENT_IP = socket.inet_ntoa(CLIENT)
VIP, PORT = "10.0.0.100", 5555
SECRET = b"port-reuse-secret"
FIRST_ISN, SECOND_ISN, OWN_ISN = 5000, 77000, 9000
REPLY = b"HTTP/1.0 200 OK\r\n\r\nhi"
M32 = 2**32
T = 10.0
OUT, IN = 4, 0  # the hooks of a packet the replica's stack sends, and of one that arrives
REUSED = 40000




def replica(name, primary):
    """(queue, engine, sent) of ``name`` in active mode with voting; lb1 is the primary."""
    translator = Translator(SECRET, PORT)
    translator.generation = 1
    engine = vote.VoteEngine(name, KEYS[name], translator.own_output,
                             lambda data, address: engine.sent.append((data, address)))
    engine.sent = []
    engine.configure(vote.VoteConfig.of(required=True, f=1, hold_s=0.2, port=5557,
                                        peers=ADDRESSES, primary="lb1", epoch=3, generation=1,
                                        unvoted="stop"))
    sent = []
    queue = nfq.ActiveQueue(types.SimpleNamespace(primary=primary), translator, None,
                            sent.append, engine, None)
    return queue, engine, sent


def open_connection(queue, client_isn, port=REUSED):
    """The client's SYN, this replica's SYN-ACK, the client's ACK."""
    for payload, hook in (
            (packet(CLIENT_IP, VIP, port, PORT, "S", client_isn), IN),
            (packet(VIP, CLIENT_IP, PORT, port, "SA", OWN_ISN, client_isn + 1), OUT),
            (packet(CLIENT_IP, VIP, port, PORT, "A", client_isn + 1, OWN_ISN + 1), IN)):
        queue.callback(QueuedPacket(payload, hook))


def stack_reply(queue, client_isn, port=REUSED):
    """This replica's stack sends REPLY (own space): the packet as queued."""
    reply = QueuedPacket(packet(VIP, CLIENT_IP, PORT, port, "PA", OWN_ISN + 1, client_isn + 1,
                                REPLY), OUT)
    queue.callback(reply)
    return reply


def shared_statement(client_isn, data=REPLY, port=REUSED):
    shared, _ = shared_values(SECRET, CLIENT, port, socket.inet_aton(VIP), PORT, client_isn)
    start = (shared + 1) % M32
    return Statement(CLIENT, port, start, (start + len(data)) % M32, protocol.digest(data))


def wire_copy(client_isn, data, port=REUSED):
    """The primary's reply as the switch copies it to a backup (shared space)."""
    start = shared_statement(client_isn, data, port).start
    return QueuedPacket(packet(VIP, CLIENT_IP, PORT, port, "PA", start, client_isn + 1, data),
                        IN)


def test_a_backup_unsure_of_a_connection_votes_on_the_next_one_on_its_port():
    queue, b2, _ = replica("lb2", primary=False)
    open_connection(queue, FIRST_ISN)
    stack_reply(queue, FIRST_ISN)
    queue.callback(wire_copy(FIRST_ISN, b"HTTP/1.0 200 OK\r\n\r\nXX"))  # the primary lied
    assert (CLIENT, REUSED) in b2.unsure and b2.counters["wire_divergent"] == 1

    open_connection(queue, SECOND_ISN)  # the client's port comes round again
    assert b2.unsure == {} and b2.counters["connections_forgotten"] == 1
    stack_reply(queue, SECOND_ISN)
    claim = shared_statement(SECOND_ISN)
    b2.receive(protocol.encode(CLAIM, "lb1", [claim], KEYS["lb1"], 1), T)
    b2.flush()
    [(data, address)] = b2.sent
    batch = protocol.decode(data)
    assert (batch.kind, batch.statements, address[0]) == (VOTE, (claim,), ADDRESSES["lb1"])
    assert b2.counters["abstentions"] == 0


def test_without_a_new_connection_the_backup_still_abstains_on_one_it_is_unsure_of():
    queue, b2, _ = replica("lb2", primary=False)
    open_connection(queue, FIRST_ISN)
    stack_reply(queue, FIRST_ISN)
    queue.callback(wire_copy(FIRST_ISN, b"HTTP/1.0 200 OK\r\n\r\nXX"))
    open_connection(queue, FIRST_ISN)  # the client's SYN again (the same ISN): the same one
    claim = shared_statement(FIRST_ISN)
    b2.receive(protocol.encode(CLAIM, "lb1", [claim], KEYS["lb1"], 1), T)
    b2.flush()
    assert [s.range_key for s in abstentions_sent(b2)] == [claim.range_key]
    assert b2.counters["connections_forgotten"] == 0


def abstention(author, statement):
    blank = Statement(statement.client, statement.port, statement.start, statement.end,
                      NO_DIGEST)
    return protocol.encode(ABSTAIN, author, [blank], KEYS[author], 1)


def test_a_primary_serves_the_next_connection_on_the_port_of_one_it_reset():
    queue, p, sent = replica("lb1", primary=True)
    open_connection(queue, FIRST_ISN)
    first = stack_reply(queue, FIRST_ISN)
    claim = shared_statement(FIRST_ISN)
    assert first.calls == [] and p.counters["claims"] == 1  # held for the votes
    p.receive(abstention("lb2", claim), T)
    p.receive(abstention("lb3", claim), T)  # no voter left on it: reset
    assert p.counters["unvotable_resets"] == 1 and (CLIENT, REUSED) in p.unvotable
    queue.tick(T)
    [rst] = sent
    assert IP(rst)[TCP].flags == "R"

    open_connection(queue, SECOND_ISN)
    assert p.unvotable == {} and p.abstained == {}
    second = stack_reply(queue, SECOND_ISN)
    assert second.calls == [] and p.counters["claims"] == 2  # held for votes, not dropped
    released = p.receive(protocol.encode(VOTE, "lb2", [shared_statement(SECOND_ISN)],
                                         KEYS["lb2"], 1), T + 0.01)
    assert [token for token, _ in released] == [second]


def test_a_reset_decided_for_the_earlier_connection_is_not_sent_to_the_next_one():
    queue, p, sent = replica("lb1", primary=True)
    open_connection(queue, FIRST_ISN)
    stack_reply(queue, FIRST_ISN)
    claim = shared_statement(FIRST_ISN)
    p.receive(abstention("lb2", claim), T)
    p.receive(abstention("lb3", claim), T)
    assert p.resets == [(CLIENT, REUSED)]
    open_connection(queue, SECOND_ISN)  # before the tick that would send the RST
    queue.tick(T)
    assert p.resets == []
    assert [IP(pkt).dst for pkt in sent] == [VIP, VIP]  # to its own stack only, see below


def test_an_abstention_answering_no_claim_of_this_primary_changes_nothing():
    """After a failover a backup answers the old primary's claims late (after its patience),
    and sends the answer to the primary it has now: that one never claimed the range."""
    queue, p, sent = replica("lb1", primary=True)
    open_connection(queue, FIRST_ISN)
    stack_reply(queue, FIRST_ISN)
    mine = shared_statement(FIRST_ISN)
    other = Statement(CLIENT, REUSED, mine.start - 500, mine.start - 400, NO_DIGEST)
    assert p.receive(abstention("lb2", other), T) == []
    assert p.receive(abstention("lb3", other), T) == []
    assert p.abstained == {} and p.resets == [] and p.unvotable == {}
    assert p.counters["abstentions_unclaimed"] == 2 and p.counters["unvotable_resets"] == 0
    queue.tick(T)
    assert sent == []
    released = p.receive(protocol.encode(VOTE, "lb2", [mine], KEYS["lb2"], 1), T + 0.01)
    assert len(released) == 1  # the connection goes on


def test_an_abstention_on_a_released_claim_still_counts():
    """A claim released on one vote keeps collecting answers (recent): the other backup's
    abstention on the whole connection still tells the primary who is left to vote there."""
    p = vote.VoteEngine("lb1", KEYS["lb1"], Translator(SECRET, PORT).own_output,
                        lambda data, address: None)
    p.configure(vote.VoteConfig.of(required=True, f=1, peers=ADDRESSES, primary="lb1",
                                   generation=1, unvoted="stop"))
    seg = shared_statement(FIRST_ISN)
    token = Token()
    p.hold(token, b"payload", seg, T)
    assert p.receive(protocol.encode(VOTE, "lb2", [seg], KEYS["lb2"], 1), T) == [
        (token, b"payload")]
    p.receive(abstention("lb3", seg), T + 0.01)
    assert p.possible_voters((CLIENT, REUSED)) == ["lb2"]
    assert p.counters["abstentions_unclaimed"] == 0


# --- the stack's socket of the earlier connection ---------------------------------------------

def effects_of(translator, payload, hook=IN, primary=False):
    return translator.process(payload, Token(), primary, T, hook == IN)


def test_a_new_connection_on_a_port_first_resets_the_stacks_earlier_socket():
    """A replica cut off mid-connection (excluded, then readmitted) never saw the client's
    FIN: its stack still holds the socket, and answered the next SYN on that client port with
    an ACK, so that connection never opened on it (seen in the voting lab: its agent held the
    client's packets until they expired, and could not vote)."""
    translator = Translator(SECRET, PORT)
    effects_of(translator, packet(CLIENT_IP, VIP, REUSED, PORT, "S", FIRST_ISN))
    effects_of(translator, packet(VIP, CLIENT_IP, PORT, REUSED, "SA", OWN_ISN, FIRST_ISN + 1),
               OUT)
    effects_of(translator, packet(CLIENT_IP, VIP, REUSED, PORT, "PA", FIRST_ISN + 1,
                                  OWN_ISN + 1, b"GET / HTTP/1.0\r\n\r\n"))
    # (its stack acknowledged only the SYN so far: the client's next byte is further on)
    syn = packet(CLIENT_IP, VIP, REUSED, PORT, "S", SECOND_ISN)
    verdict, _, _, send, to_stack, _ = effects_of(translator, syn)
    assert verdict == nfq.active.DROP and send == ()
    *resets, again = to_stack
    assert again == syn  # the SYN itself follows the RSTs
    assert [(IP(r).src, IP(r).dst, IP(r)[TCP].sport, IP(r)[TCP].dport, str(IP(r)[TCP].flags),
             IP(r)[TCP].seq) for r in resets] == [
        (CLIENT_IP, VIP, REUSED, PORT, "R", FIRST_ISN + 1),
        (CLIENT_IP, VIP, REUSED, PORT, "R", FIRST_ISN + 19)]
    assert translator.snapshot()["port_reuse_resets"] == 1
    assert translator.connections[(CLIENT, REUSED)].client_isn == SECOND_ISN


def test_a_resent_syn_or_an_earlier_connection_the_stack_never_answered_goes_through():
    translator = Translator(SECRET, PORT)
    syn = packet(CLIENT_IP, VIP, REUSED, PORT, "S", FIRST_ISN)
    assert effects_of(translator, syn)[0] == nfq.active.ACCEPT
    again = effects_of(translator, syn)  # resent: the same connection
    assert again[0] == nfq.active.ACCEPT and again[4] == ()
    new = effects_of(translator, packet(CLIENT_IP, VIP, REUSED, PORT, "S", SECOND_ISN))
    assert new[0] == nfq.active.ACCEPT and new[4] == ()  # its stack never had a socket
    assert translator.snapshot()["port_reuse_resets"] == 0
