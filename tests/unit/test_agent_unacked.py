"""Tests for sbft_ryu.agent.unacked: a backup's unacknowledged output, kept in order, trimmed
by the client's acknowledgements, bounded, handed out once for the replay on promotion."""

from sbft_ryu.agent import unacked
from sbft_ryu.agent.active import Connection

M32 = 2**32


def conn():
    return Connection(client_isn=1, shared_isn=2, ts_base=3, now=100.0)


def test_keep_appends_in_order_and_ignores_retransmissions():
    c = conn()
    c.seen = 101.0
    assert unacked.keep(c, 10, 20, b"a" * 50) and unacked.keep(c, 20, 30, b"b" * 50)
    assert unacked.keep(c, 10, 20, b"a" * 50)  # already kept: nothing changes
    assert [(seq, end) for seq, end, _ in c.unacked] == [(10, 20), (20, 30)]
    assert (c.unacked_bytes, c.own_at, c.lossy) == (100, 101.0, False)


def test_trim_forgets_what_the_client_acknowledged_across_the_wrap():
    c = conn()
    unacked.keep(c, M32 - 10, 5, b"x" * 40)
    unacked.keep(c, 5, 15, b"y" * 40)
    unacked.trim(c, 4)  # the first segment ends at 5: not all acknowledged yet
    assert len(c.unacked) == 2
    unacked.trim(c, 5)
    assert [(seq, end) for seq, end, _ in c.unacked] == [(5, 15)] and c.unacked_bytes == 40


def test_keep_beyond_the_cap_marks_the_connection_lossy(monkeypatch):
    monkeypatch.setattr(unacked, "MAX_UNACKED_BYTES", 60)
    c = conn()
    assert unacked.keep(c, 0, 10, b"a" * 50)
    assert not unacked.keep(c, 10, 20, b"b" * 50)
    assert c.lossy and c.unacked_bytes == 50


def test_take_hands_out_what_is_unacknowledged_once():
    c = conn()
    unacked.keep(c, 0, 10, b"a")
    unacked.keep(c, 10, 20, b"b")
    c.own_acked = 10
    assert unacked.take(c) == [(10, b"b")]
    assert (c.unacked, c.unacked_bytes) == (None, 0)
    assert unacked.take(c) == []
