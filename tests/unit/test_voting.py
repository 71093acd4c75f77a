"""Tests for sbft_ryu.voting: digests, signed vote batches, signed heartbeat bodies and the
controller's Judge (time is passed in: no clock, no sleeping)."""

import struct

import pytest

from sbft_ryu import protocol, voting
from sbft_ryu.protocol import CLAIM, VOTE, Statement, VotingError
from sbft_ryu.voting import Judge

KEYS = {name: bytes([n]) * 16 for n, name in enumerate(("lb1", "lb2", "lb3"), 1)}
CLIENT = bytes([10, 0, 0, 31])
TRUE = protocol.digest(b"HTTP/1.0 200 OK\r\n\r\nhi")
LIE = protocol.digest(b"HTTP/1.0 200 OK\r\n\r\nXX")


def stmt(start=1000, end=1022, value=TRUE, port=40000):
    return Statement(CLIENT, port, start, end, value)


def batch(author, *statements, kind=VOTE, key=None):
    """A decoded batch as the controller gets it (signed with ``author``'s key by default)."""
    return protocol.decode(protocol.encode(kind, author, list(statements),
                                       KEYS[author] if key is None else key))


# --- digest ----------------------------------------------------------------------------------

def test_digest_is_16_deterministic_bytes():
    assert len(protocol.digest(b"abc")) == protocol.DIGEST == 16
    assert protocol.digest(b"abc") == protocol.digest(bytearray(b"abc")) == protocol.digest(
        memoryview(b"xabc")[1:])


def test_digest_tells_data_and_a_final_fin_apart():
    values = {protocol.digest(b"abc"), protocol.digest(b"abd"), protocol.digest(b"abc", fin=True),
              protocol.digest(b""), protocol.digest(b"", fin=True)}
    assert len(values) == 5  # truncation (a FIN early) is a divergence


# --- signed batches --------------------------------------------------------------------------

def test_a_batch_round_trips_and_verifies_with_its_authors_key():
    statements = [stmt(), stmt(2000, 2001, protocol.digest(b"", True), port=1)]
    raw = protocol.encode(CLAIM, "lb1", statements, KEYS["lb1"])
    decoded = protocol.decode(raw)
    assert (decoded.kind, decoded.author, decoded.statements, decoded.raw) == (
        CLAIM, "lb1", tuple(statements), raw)
    assert protocol.verify(decoded, KEYS["lb1"])
    assert decoded.statements[0].range_key == (CLIENT, 40000, 1000, 1022)


def test_an_empty_batch_and_a_full_one_round_trip():
    assert protocol.decode(protocol.encode(VOTE, "lb2", [], KEYS["lb2"])).statements == ()
    full = [stmt(i, i + 1) for i in range(protocol.MAX_STATEMENTS)]
    raw = protocol.encode(VOTE, "lb2", full, KEYS["lb2"])
    assert len(raw) < 1500  # one datagram on the management network
    assert protocol.decode(raw).statements == tuple(full)


@pytest.mark.parametrize("author", ["lb2", "lb3"])
def test_a_batch_does_not_verify_with_another_key(author):
    decoded = batch("lb1", stmt())
    assert not protocol.verify(decoded, KEYS[author])


def test_a_batch_signed_in_another_replicas_name_does_not_verify():
    forged = batch("lb3", stmt(), key=KEYS["lb2"])  # lb2 speaking for lb3
    assert forged.author == "lb3"
    assert not protocol.verify(forged, KEYS["lb3"])


# kind, generation, author, statement, MAC
@pytest.mark.parametrize("at", [4, 5, 8, 12, 30, -20, -1])
def test_a_tampered_batch_does_not_verify(at):
    raw = bytearray(protocol.encode(VOTE, "lb2", [stmt()], KEYS["lb2"]))
    raw[at] ^= 0x01
    try:
        decoded = protocol.decode(bytes(raw))
    except VotingError:
        return  # (a changed header may not even parse)
    assert not protocol.verify(decoded, KEYS["lb2"])


def test_a_statement_changed_to_another_digest_does_not_verify():
    raw = protocol.encode(VOTE, "lb2", [stmt(value=TRUE)], KEYS["lb2"])
    swapped = raw.replace(TRUE, LIE)
    assert swapped != raw and protocol.decode(swapped).statements[0].digest == LIE
    assert not protocol.verify(protocol.decode(swapped), KEYS["lb2"])


@pytest.mark.parametrize("cut", [0, 3, 6, 9, 20, 1, protocol.TAG])
def test_a_truncated_batch_is_rejected(cut):
    raw = protocol.encode(VOTE, "lb2", [stmt()], KEYS["lb2"])
    data = raw[:cut] if cut < 10 else raw[:-cut]
    with pytest.raises(VotingError):
        protocol.decode(data)


@pytest.mark.parametrize("data", [
    b"XXXX" + protocol.encode(VOTE, "lb2", [stmt()], KEYS["lb2"])[4:],  # magic
    b"SBV2\x04\x00\x00\x00\x01\x03\x01lb2" + bytes(60),  # an unknown kind
    b"SBV2\x02\x00\x00\x00\x01\x00\x00" + bytes(16),  # no author
    protocol.encode(VOTE, "lb2", [stmt()], KEYS["lb2"]) + b"\x00",  # a byte too many
    b"SBV2\x02\x00\x00\x00\x01\x03\x00l\xffx" + bytes(16),  # not ASCII
    b"",
])
def test_garbage_is_rejected_with_a_voting_error(data):
    with pytest.raises(VotingError):
        protocol.decode(data)
    assert issubclass(VotingError, ValueError)


def _old_format(kind, author, statements, key):
    """A batch as agents of the previous version (SBV1, no generation) signed it."""
    name = author.encode("ascii")
    body = struct.pack("!4sBBB", b"SBV1", kind, len(name), len(statements)) + name + b"".join(
        struct.pack("!4sHII16s", s.client, s.port, s.start, s.end, s.digest)
        for s in statements)
    return body + protocol.mac(key, body)


@pytest.mark.parametrize("data", [
    _old_format(VOTE, "lb2", [stmt()], KEYS["lb2"]),
    _old_format(CLAIM, "lb1", [], KEYS["lb1"]),
    b"SBV1",
])
def test_a_batch_of_the_old_format_is_rejected_with_a_voting_error(data):
    with pytest.raises(VotingError, match="older format"):
        protocol.decode(data)


def test_the_generation_is_signed_into_the_batch():
    raw = protocol.encode(VOTE, "lb2", [stmt()], KEYS["lb2"], generation=7)
    assert protocol.decode(raw).generation == 7
    assert protocol.decode(protocol.encode(VOTE, "lb2", [], KEYS["lb2"])).generation == 0
    moved = bytearray(raw)
    moved[8] = 8  # generation 7 -> 8, as a replayed old batch would need
    assert protocol.decode(bytes(moved)).generation == 8
    assert not protocol.verify(protocol.decode(bytes(moved)), KEYS["lb2"])
    with pytest.raises(VotingError):
        protocol.encode(VOTE, "lb2", [], KEYS["lb2"], generation=-1)


@pytest.mark.parametrize("author, count", [("", 1), ("x" * 33, 1),
                                           ("lb1", protocol.MAX_STATEMENTS + 1)])
def test_encode_refuses_out_of_range_batches(author, count):
    with pytest.raises(VotingError):
        protocol.encode(VOTE, author, [stmt()] * count, KEYS["lb1"])


# --- signed heartbeat bodies -----------------------------------------------------------------

BODY = {"seq": 4, "service_ok": True, "counters": {"b": 2, "a": 1.5}, "nonce": "n1"}


def signed(body, name="lb1", key=None):
    return {**body, "mac": protocol.sign_body(KEYS[name] if key is None else key, name, body)}


def test_canonical_drops_the_mac_sorts_keys_and_has_no_spaces():
    assert protocol.canonical({**BODY, "mac": "x"}) == (
        b'{"counters":{"a":1.5,"b":2},"nonce":"n1","seq":4,"service_ok":true}')


def test_a_signed_body_verifies_whatever_its_key_order():
    body = signed(BODY)
    assert len(body["mac"]) == 2 * protocol.TAG
    assert protocol.body_signed(KEYS["lb1"], "lb1", body)
    assert protocol.body_signed(KEYS["lb1"], "lb1", dict(reversed(list(body.items()))))


@pytest.mark.parametrize("change", [{"seq": 5}, {"service_ok": False}, {"nonce": "n2"},
                                    {"counters": {"a": 1.5, "b": 3}}, {"extra": 1}])
def test_any_change_to_a_signed_body_is_detected(change):
    assert not protocol.body_signed(KEYS["lb1"], "lb1", {**signed(BODY), **change})


def test_a_body_signed_by_another_key_or_for_another_name_does_not_verify():
    assert not protocol.body_signed(KEYS["lb1"], "lb1", signed(BODY, key=KEYS["lb2"]))
    assert not protocol.body_signed(KEYS["lb2"], "lb2", signed(BODY, "lb1", key=KEYS["lb2"]))
    # the name is covered: lb1's signature never passes as lb2's, even with one key
    assert not protocol.body_signed(KEYS["lb1"], "lb2", signed(BODY))


@pytest.mark.parametrize("tag", [None, 7, ["00"], "", "00" * 16])
def test_a_body_without_a_proper_mac_does_not_verify(tag):
    body = dict(BODY) if tag is None else {**BODY, "mac": tag}
    assert protocol.body_signed(KEYS["lb1"], "lb1", body) is False


def test_a_non_ascii_mac_does_not_verify():
    assert protocol.body_signed(KEYS["lb1"], "lb1", {**BODY, "mac": "\u00e9" * 32}) is False


# --- Judge: majority, suspicion, decay ---------------------------------------------------------

NAMES = ("lb1", "lb2", "lb3")


def judge(**kwargs):
    return Judge(NAMES, 1, **{"threshold": 3.0, "half_life": 5.0, **kwargs})


def evidence(start, liar="lb3", primary="lb1"):
    """A primary's report for one range: its claim and both backups' votes, ``liar`` lying."""
    return [batch(name, stmt(start, start + 22, LIE if name == liar else TRUE),
                  kind=CLAIM if name == primary else VOTE) for name in NAMES]


def test_the_quorum_is_n_minus_f():
    assert judge().quorum == 2
    assert Judge(("a", "b", "c", "d", "e"), 2).quorum == 3


def test_agreement_suspects_nobody():
    j = judge()
    assert j.opinions("lb1", evidence(1000, liar=None), 10.0) == set()
    assert all(j.suspicion(name, 10.0) == 0.0 for name in NAMES)
    assert [j.stats[name].divergences for name in NAMES] == [0, 0, 0]
    assert j.stats["lb1"].reported == 1


def test_a_single_minority_liar_is_suspected_then_convicted_at_the_threshold():
    j = judge()
    assert j.opinions("lb1", evidence(1000), 10.0) == set()
    assert (j.stats["lb3"].divergences, j.suspicion("lb3", 10.0)) == (1, 1.0)
    assert j.suspicion("lb1", 10.0) == j.suspicion("lb2", 10.0) == 0.0
    assert j.opinions("lb1", evidence(2000), 10.0) == set()
    assert j.opinions("lb1", evidence(3000), 10.0) == {"lb3"}  # 3 points: the threshold
    assert j.stats["lb3"].divergences == 3


@pytest.mark.parametrize("liar", ["lb1", "lb2"])
def test_the_liar_may_be_the_primary_or_the_other_backup(liar):
    j = judge(threshold=1.0)
    assert j.opinions("lb2", evidence(1000, liar=liar), 10.0) == {liar}


def test_a_range_is_judged_once_however_often_it_is_reported():
    j = judge()
    for reporter in ("lb1", "lb2", "lb1"):
        j.opinions(reporter, evidence(1000), 10.0)
    assert j.stats["lb3"].divergences == 1
    assert j.stats["lb1"].reported == 2 and j.stats["lb2"].reported == 1


def test_without_a_majority_nobody_is_suspected_until_the_third_opinion():
    j = judge(threshold=1.0)
    claim, honest, liar = evidence(1000)
    assert j.opinions("lb3", [claim, liar], 10.0) == set()  # one against one
    assert j.suspicion("lb3", 10.0) == j.suspicion("lb1", 10.0) == 0.0
    assert j.opinions("lb2", [claim, honest], 11.0) == {"lb3"}  # now two agree


def test_undecided_ranges_are_forgotten_after_the_window():
    j = judge(threshold=1.0, window=2.0)
    claim, honest, liar = evidence(1000)
    j.opinions("lb3", [claim, liar], 10.0)
    assert j.opinions("lb2", [claim, honest], 12.5) == set()  # lb3's opinion expired
    assert j.stats["lb3"].divergences == 0


def test_an_authors_first_statement_on_a_range_counts():
    j = judge(threshold=1.0)
    claim, honest, liar = evidence(1000)
    recant = batch("lb3", stmt(1000, 1022, TRUE))
    assert j.opinions("lb3", [claim, liar, recant], 10.0) == set()
    assert j.opinions("lb2", [honest], 10.0) == {"lb3"}


def test_suspicion_decays_with_the_half_life():
    j = judge(half_life=5.0)
    j.opinions("lb1", evidence(1000), 10.0)
    j.opinions("lb1", evidence(2000), 10.0)
    assert j.suspicion("lb3", 10.0) == 2.0
    assert j.suspicion("lb3", 15.0) == pytest.approx(1.0)
    assert j.suspicion("lb3", 20.0) == pytest.approx(0.5)
    assert j.suspicion("lb3", 5.0) == 2.0  # never grows backwards in time
    # a third point one half-life later: 2 * 0.5 + 1 = 2, below the threshold
    assert j.opinions("lb1", evidence(3000), 15.0) == set()
    assert j.suspicion("lb3", 15.0) == pytest.approx(2.0)
    assert j.opinions("lb1", evidence(4000), 15.0) == {"lb3"}  # 3 within the same moment


def test_rare_divergences_spread_over_time_never_convict():
    """Honest nondeterminism (a Date header crossing a second) makes isolated points."""
    j = judge(half_life=5.0)
    for n in range(200):
        assert j.opinions("lb1", evidence(1000 + 100 * n), 10.0 + 5.0 * n) == set()
    assert j.stats["lb3"].divergences == 200
    assert j.suspicion("lb3", 1005.0) < 2.01


def test_readmit_clears_the_suspicion():
    j = judge(threshold=1.0)
    j.opinions("lb1", evidence(1000), 10.0)
    j.readmit("lb3")
    assert j.suspicion("lb3", 10.0) == 0.0
    assert j.stats["lb3"].divergences == 1  # the record stays


def test_rejected_counts_the_reporter():
    j = judge()
    j.rejected("lb2")
    j.rejected("lb2")
    assert (j.stats["lb2"].rejected, j.stats["lb2"].reported) == (2, 0)


# --- Judge: the divergence rate -----------------------------------------------------------------

def test_compared_counts_start_from_a_baseline_and_survive_an_agent_restart():
    j = judge(half_life=5.0)
    j.compared("lb1", 500, 10.0)  # the first count is only a baseline
    assert j.compared_mass("lb2", 10.0) == 0.0
    j.compared("lb1", 600, 10.0)
    assert j.compared_mass("lb2", 10.0) == 100.0
    j.compared("lb1", 30, 10.0)  # smaller: the agent restarted and counted 30 since
    assert j.compared_mass("lb2", 10.0) == 130.0
    assert j.compared_mass("lb2", 15.0) == pytest.approx(65.0)  # decays like suspicion


def test_compared_mass_is_the_f_th_largest_of_the_others_counts():
    j = judge()
    for name, total in (("lb1", 300), ("lb2", 100), ("lb3", 5000)):
        j.compared(name, 0, 10.0)
        j.compared(name, total, 10.0)
    assert j.compared_mass("lb3", 10.0) == 300.0  # never its own count
    assert j.compared_mass("lb1", 10.0) == 5000.0
    big = Judge(("a", "b", "c", "d", "e"), 2)
    for name, total in zip("abcde", (10, 20, 30, 40, 50)):
        big.compared(name, 0, 0.0)
        big.compared(name, total, 0.0)
    assert big.compared_mass("e", 0.0) == 30.0  # 2nd largest of 10, 20, 30, 40


def test_a_busy_tier_needs_the_rate_too_not_only_the_threshold():
    j = judge(threshold=3.0, rate=0.02)
    for name in NAMES:
        j.compared(name, 0, 10.0)
        j.compared(name, 1000, 10.0)
    for n in range(19):  # 19 divergent ranges of 1000: below 2 %
        assert j.opinions("lb1", evidence(1000 + 100 * n), 10.0) == set()
    assert j.divergence_rate("lb3", 10.0) == pytest.approx(0.019)
    assert j.opinions("lb1", evidence(9000), 10.0) == {"lb3"}  # 20 of 1000


def test_divergence_rate_without_counts_is_the_suspicion():
    j = judge()
    j.opinions("lb1", evidence(1000), 10.0)
    assert j.divergence_rate("lb3", 10.0) == 1.0
    assert j.divergence_rate("lb1", 10.0) == 0.0


# --- Judge: the wire check ---------------------------------------------------------------------

def wire(j, reporter, now=10.0, epoch=1, port=40000, start=1000, end=1022, primary="lb1"):
    return j.wire(reporter, primary, epoch, CLIENT, port, start, end, now)


def test_f_plus_one_backups_on_one_range_convict_the_primary_once():
    j = judge()
    assert wire(j, "lb2") is False  # one backup may be an honest minority
    assert wire(j, "lb2") is False  # the same one again is still one
    assert wire(j, "lb3") is True
    assert wire(j, "lb3") is False  # counted once
    assert j.stats["lb1"].wire_divergences == 1


@pytest.mark.parametrize("other", [dict(start=2000, end=2022), dict(port=40001),
                                   dict(epoch=2)])
def test_reports_of_different_ranges_connections_or_epochs_do_not_add_up(other):
    j = judge()
    assert wire(j, "lb2") is False
    assert wire(j, "lb3", **other) is False
    assert j.stats["lb1"].wire_divergences == 0


def test_unconfirmed_wire_reports_expire_after_the_window():
    j = judge(window=2.0)
    wire(j, "lb2", now=10.0)
    assert wire(j, "lb3", now=12.5) is False


def test_a_primarys_own_report_does_not_shield_it():
    j = judge()
    assert wire(j, "lb1") is False  # the primary "reports" itself first
    assert wire(j, "lb2") is False
    assert wire(j, "lb3") is True  # f + 1 = 2 backups saw it


def test_tainted_lists_every_reported_connection_of_a_convicted_epoch():
    j = judge()
    wire(j, "lb2", port=40002)  # a single backup's report: tainted only after a conviction
    assert j.tainted(1) == []
    wire(j, "lb2", port=40001)
    wire(j, "lb3", port=40001)
    wire(j, "lb2", epoch=2, port=40009)
    assert j.tainted(1) == [(CLIENT, 40001), (CLIENT, 40002)]
    assert j.tainted(2) == j.tainted(1)  # epoch 2 convicted nobody; epoch 1's stay tainted
    assert j.tainted(0) == []


def test_a_convicted_epoch_is_remembered_for_taint_s_only():
    j = judge(window=2.0)
    wire(j, "lb2", now=10.0)
    wire(j, "lb3", now=10.0)
    j.expire(10.0 + voting.TAINT_S - 1)
    assert j.tainted(1) == [(CLIENT, 40000)]
    j.expire(10.0 + voting.TAINT_S + 1)
    assert j.tainted(1) == []
