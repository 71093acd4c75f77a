"""Tests for sbft_ryu.agent.nfq.ActiveQueue with a VoteEngine: a primary's replies wait for
the backups' votes (arriving on a fake vote socket), a backup checks the switch's copies of the
primary's replies, a new primary's replay is voted through RawSend tokens, tainted and outvoted
connections are reset. Fake packets and sockets: no kernel, no network."""

import socket
import types

import pytest
from scapy.all import IP, TCP, Raw

from sbft_ryu import protocol
from sbft_ryu.agent import nfq, vote
from sbft_ryu.agent.faults import PacketAdapter
from sbft_ryu.agent.active import Translator, shared_values
from sbft_ryu.agent.own_output import statement_of

from fakes import QueuedPacket

M32 = 2**32
CLIENT, VIP, CPORT, PORT = "10.0.0.31", "10.0.0.100", 40000, 5555
CLIENT_IP = socket.inet_aton(CLIENT)
SECRET = b"queue-voting-secret"
CLIENT_ISN = 5000
SHARED, _ = shared_values(SECRET, CLIENT_IP, CPORT, socket.inet_aton(VIP), PORT, CLIENT_ISN)
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(("lb1", "lb2", "lb3"), 1)}
PEERS = {"lb1": "10.254.0.1", "lb2": "10.254.0.2", "lb3": "10.254.0.3"}
PRE_ROUTING, POST_ROUTING = 0, 4
BODY = b"HTTP/1.0 200 OK\r\n\r\nhi"


def client_pkt(flags, seq, ack=0, data=b""):
    packet = IP(src=CLIENT, dst=VIP, flags="DF") / TCP(sport=CPORT, dport=PORT, flags=flags,
                                                       seq=seq % M32, ack=ack % M32)
    return bytes(packet / Raw(data)) if data else bytes(packet)


def stack_pkt(flags, seq, data=b""):
    packet = IP(src=VIP, dst=CLIENT, flags="DF") / TCP(sport=PORT, dport=CPORT, flags=flags,
                                                       seq=seq % M32, ack=CLIENT_ISN + 1)
    return bytes(packet / Raw(data)) if data else bytes(packet)


SYN = client_pkt("S", CLIENT_ISN)
REQUEST = client_pkt("PA", CLIENT_ISN + 1, SHARED + 1, b"GET / HTTP/1.0\r\n\r\n")


def synack(own_isn):
    return stack_pkt("SA", own_isn)


def response(own_isn, data=BODY):
    return stack_pkt("PA", own_isn + 1, data)


class FakeSocket:
    """The vote socket: ``incoming`` datagrams for recv (then EAGAIN), ``sent`` by sendto."""

    def __init__(self):
        self.incoming, self.sent = [], []

    def recv(self, size):
        if not self.incoming:
            raise BlockingIOError
        return self.incoming.pop(0)

    def sendto(self, data, address):
        self.sent.append((data, address))


def make(name, primary, required=True, fault=None):
    """(queue, vote socket, packets the agent sent itself) of replica ``name``."""
    translator = Translator(SECRET, PORT)
    sock = FakeSocket()
    engine = vote.VoteEngine(name, KEYS[name], translator.own_output, sock.sendto)
    engine.configure(vote.VoteConfig.of(required=required, f=1, hold_s=0.2, port=5557, peers=PEERS,
                     primary="lb1", epoch=1))
    sent = []
    state = types.SimpleNamespace(primary=primary)
    queue = nfq.ActiveQueue(state, translator, PacketAdapter(reply=fault), sent.append, engine,
                            sock)
    return queue, sock, sent


def feed(queue, payload, hook):
    packet = QueuedPacket(payload, hook)
    queue.callback(packet)
    return packet


def serve_request(queue, own_isn):
    for payload, hook in ((SYN, PRE_ROUTING), (synack(own_isn), POST_ROUTING),
                          (REQUEST, PRE_ROUTING)):
        feed(queue, payload, hook)


def claims(sock):
    """Claims the queue's engine sent, decoded, and to whom."""
    out = [(protocol.decode(data), address) for data, address in sock.sent]
    sock.sent.clear()
    return out


def vote_for(batch, author="lb2", value=None):
    statement = batch.statements[0]
    if value is not None:
        statement = protocol.Statement(statement.client, statement.port, statement.start,
                                     statement.end, value)
    return protocol.encode(protocol.VOTE, author, [statement], KEYS[author])


# --- the primary ---------------------------------------------------------------------------------

def test_the_handler_watches_its_vote_socket():
    queue, sock, _ = make("lb1", True)
    assert queue.fds() == [sock]
    plain = nfq.ActiveQueue(types.SimpleNamespace(primary=True), Translator(SECRET, PORT))
    assert plain.fds() == []


def test_a_primarys_reply_waits_for_a_vote(clock):
    queue, sock, _ = make("lb1", True)
    serve_request(queue, 70000)
    reply = feed(queue, response(70000), POST_ROUTING)
    assert reply.calls == []  # held
    queue.flush()
    sent = claims(sock)
    assert sorted(address for _, address in sent) == [("10.254.0.2", 5557),
                                                       ("10.254.0.3", 5557)]
    claim = sent[0][0]
    assert claim.statements[0].start == (SHARED + 1) % M32
    assert claim.statements[0].digest == protocol.digest(BODY)
    sock.incoming.append(vote_for(claim))
    queue.readable(sock, clock[0])
    assert [call[0] for call in reply.calls] == ["set_payload", "accept"]
    released = reply.calls[0][1]
    assert IP(released)[TCP].seq == (SHARED + 1) % M32
    assert statement_of(released) == claim.statements[0]


def test_a_divergent_vote_releases_nothing_and_the_hold_expires(clock):
    queue, sock, _ = make("lb1", True)
    serve_request(queue, 70000)
    reply = feed(queue, response(70000), POST_ROUTING)
    queue.flush()
    sock.incoming.append(vote_for(claims(sock)[0][0], value=protocol.digest(b"other")))
    queue.readable(sock, clock[0])
    assert reply.calls == []
    queue.tick(clock[0] + 0.3)
    assert reply.calls == [("drop",)]
    counters = queue.snapshot()
    assert (counters["divergent_votes"], counters["vote_timeouts"]) == (1, 1)


def test_unvoted_replies_leave_at_once(clock):
    queue, sock, _ = make("lb1", True, required=False)
    serve_request(queue, 70000)
    reply = feed(queue, response(70000), POST_ROUTING)
    assert [call[0] for call in reply.calls] == ["set_payload", "accept"]
    queue.flush()
    assert sock.sent == [] and queue.snapshot()["released_unvoted"] == 1


def test_the_test_fault_sends_altered_replies_past_the_vote(clock):
    queue, sock, _ = make("lb1", True, fault=lambda payload: payload[:-2] + b"XX")
    serve_request(queue, 70000)
    reply = feed(queue, response(70000), POST_ROUTING)
    assert reply.calls[-1] == ("accept",) and reply.calls[0][1].endswith(b"XX")
    queue.flush()
    assert sock.sent == []  # never claimed: a compromised host bypasses its agent


def test_snapshot_adds_the_vote_counters(clock):
    queue, _, _ = make("lb1", True)
    counters = queue.snapshot()
    assert set(vote.COUNTER_NAMES) | {"resets_sent", "callback_errors"} <= set(counters)


def test_close_drops_the_replies_held_for_votes(clock):
    queue, _, _ = make("lb1", True)
    serve_request(queue, 70000)
    reply = feed(queue, response(70000), POST_ROUTING)
    queue.close()
    assert reply.calls == [("drop",)] and queue.vote.pending == {}


# --- the backup ----------------------------------------------------------------------------------

def primary_copy(data=BODY):
    """The primary's reply as the switch copies it to a backup (translated, shared space)."""
    primary = Translator(SECRET, PORT)
    primary.process(SYN, None, True, 0.0)
    primary.process(synack(123), None, True, 0.0)
    return primary.process(response(123, data), None, True, 0.0)[1]


@pytest.mark.parametrize("data, divergent", [(BODY, 0), (b"XX" + BODY[2:], 1)])
def test_a_backup_checks_the_switchs_copy_and_never_delivers_it(clock, data, divergent):
    queue, _, _ = make("lb2", False)
    serve_request(queue, 9000)
    own = feed(queue, response(9000), POST_ROUTING)
    assert own.calls == [("drop",)]  # a backup's own reply
    copy = feed(queue, primary_copy(data), PRE_ROUTING)
    assert copy.calls == [("drop",)]
    counters = queue.snapshot()
    assert (counters["wire_checked"], counters["wire_divergent"]) == (1, divergent)
    assert len(queue.vote.reports) == divergent


def test_a_backup_answers_a_waiting_claim_when_its_own_reply_goes(clock):
    queue, sock, _ = make("lb2", False)
    serve_request(queue, 9000)
    claim = protocol.encode(protocol.CLAIM, "lb1", [statement_of(primary_copy())],
                          KEYS["lb1"])
    sock.incoming.append(claim)
    queue.readable(sock, clock[0])
    assert sock.sent == [] and len(queue.vote.waiting) == 1  # its stack has not answered yet
    feed(queue, response(9000), POST_ROUTING)
    queue.flush()
    [(data, address)] = sock.sent
    assert address == ("10.254.0.1", 5557)
    assert protocol.decode(data).statements == protocol.decode(claim).statements  # agreement


# --- a new primary's replay goes through the vote, in RawSend tokens ----------------------------

def test_raw_send_sends_its_latest_payload_on_accept_and_nothing_on_drop():
    sent = []
    token = nfq.RawSend(b"first", sent.append)
    token.drop()
    assert sent == []
    token.set_payload(b"second")
    token.accept()
    assert sent == [b"second"]


@pytest.mark.parametrize("required", [True, False], ids=["voted", "unvoted"])
def test_a_promoted_backup_replays_through_the_vote(clock, required):
    queue, sock, sent = make("lb2", False, required=required)
    serve_request(queue, 9000)
    feed(queue, response(9000), POST_ROUTING)  # sent as a backup, not acknowledged
    queue.state.primary = True
    queue.vote.configure(vote.VoteConfig.of(required=required, f=1, hold_s=0.2, port=5557,
                                            peers=PEERS, primary="lb2", epoch=2))
    queue.tick(clock[0])
    if required:
        assert sent == []  # held as a RawSend until a backup agrees
        batch = claims(sock)[0][0]
        assert batch.author == "lb2" and queue.snapshot()["claims"] == 1
        sock.incoming.append(vote_for(batch, author="lb3"))
        queue.readable(sock, clock[0])
    assert len(sent) == 1 and IP(sent[0])[TCP].seq == (SHARED + 1) % M32
    assert IP(sent[0])[Raw].load == BODY


# --- resets ----------------------------------------------------------------------------------

def test_a_new_primary_resets_the_tainted_connections_once(clock):
    queue, _, sent = make("lb2", True)
    serve_request(queue, 9000)
    queue.reset = frozenset({(CLIENT_IP, CPORT), (CLIENT_IP, 1)})  # one unknown here
    queue.tick(clock[0])
    assert len(sent) == 1 and IP(sent[0])[TCP].flags == "R"
    assert queue.snapshot()["resets_sent"] == 1
    queue.tick(clock[0] + 0.1)
    assert len(sent) == 1  # once from the list; then repeated, see below


def test_a_reset_is_repeated_a_few_times_at_the_clients_latest_acknowledgement(clock):
    queue, _, sent = make("lb2", True)
    serve_request(queue, 9000)
    queue.reset = frozenset({(CLIENT_IP, CPORT)})
    start = clock[0]
    queue.tick(start)
    first = IP(sent[0])[TCP]
    assert first.flags == "R" and first.seq == SHARED + 1  # nothing acknowledged yet
    # the client acknowledges bytes an old primary still had in flight: the first RST is
    # below its next expected byte, which a client drops silently
    feed(queue, client_pkt("A", CLIENT_ISN + 19, SHARED + 1 + 700),
         PRE_ROUTING)
    sent.clear()
    for at in [start + t for t in (0.1, 0.25, 0.5, 0.7, 1.0, 1.6, 2.0, 5.0)]:
        queue.tick(at)
    assert [(IP(p)[TCP].flags, IP(p)[TCP].seq) for p in sent] == \
        [("R", SHARED + 1 + 700)] * len(nfq.RESET_AGAIN_S)  # then forgotten
    assert queue._resets == {}


def test_a_reset_is_not_repeated_once_this_replica_is_no_longer_primary(clock):
    queue, _, sent = make("lb2", True)
    serve_request(queue, 9000)
    queue.reset = frozenset({(CLIENT_IP, CPORT)})
    queue.tick(clock[0])
    queue.state.primary = False
    queue.tick(clock[0] + 0.3)
    assert len(sent) == 1


def test_a_backup_does_not_reset(clock):
    queue, _, sent = make("lb2", False)
    serve_request(queue, 9000)
    queue.reset = frozenset({(CLIENT_IP, CPORT)})
    queue.tick(clock[0])
    assert sent == []


def test_an_outvoted_primary_resets_the_connection(clock):
    queue, sock, sent = make("lb1", True)
    serve_request(queue, 70000)
    feed(queue, response(70000), POST_ROUTING)
    queue.flush()
    claim = claims(sock)[0][0]
    other = protocol.digest(b"what both backups sent")
    sock.incoming += [vote_for(claim, "lb2", other), vote_for(claim, "lb3", other)]
    queue.readable(sock, clock[0])
    queue.tick(clock[0] + vote.OUTVOTED_RESET_S + 0.01)
    assert [IP(packet)[TCP].flags for packet in sent] == ["R"]


def test_with_the_test_fault_packets_held_for_the_synack_still_get_a_verdict(clock):
    queue, _, _ = make("lb1", True, fault=lambda payload: payload)
    feed(queue, SYN, PRE_ROUTING)
    held = feed(queue, REQUEST, PRE_ROUTING)  # before our SYN-ACK: held
    assert held.calls == []
    feed(queue, synack(70000), POST_ROUTING)
    assert [call[0] for call in held.calls] == ["set_payload", "accept"]
