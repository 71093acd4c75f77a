"""Tests for the Judge's voting set and generations (sbft_ryu.voting, sbft_ryu.referee): only
current voting-set members' statements and wire reports count; evidence the controller can
attribute to a replica's older generation (before its readmission, return or promotion)
scores nothing; a primary is convicted on the wire once per epoch."""

from sbft_ryu import protocol, voting
from sbft_ryu.config import build_config
from sbft_ryu.referee import Referee
from sbft_ryu.protocol import CLAIM, VOTE, Statement
from sbft_ryu.voting import Judge

CLIENT = bytes([10, 0, 0, 31])
TRUE, LIE = protocol.digest(b"right"), protocol.digest(b"XX")
NAMES = ("lb1", "lb2", "lb3", "lb4")
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(NAMES, 1)}


def batch(author, start, value, kind=VOTE, port=40000, generation=0):
    statement = Statement(CLIENT, port, start, start + 22, value)
    return protocol.decode(protocol.encode(kind, author, [statement], KEYS[author], generation))


def judge():
    """lb1..lb3 vote (n = 3, f = 1, quorum 2); lb4 is a spare."""
    return Judge(NAMES, 1, threshold=3.0, half_life=5.0, voters=("lb1", "lb2", "lb3"))


def report(j, now, start, liar, port=40000, members=("lb1", "lb2", "lb3"), reporter="lb1",
           generations=None):
    """lb1's report of one range: its claim and the others' votes, ``liar`` lying; each batch
    signed in its author's ``generations`` entry (default 0)."""
    generations = generations or {}
    batches = [batch(name, start, LIE if name == liar else TRUE,
                     CLAIM if name == members[0] else VOTE, port, generations.get(name, 0))
               for name in members]
    return j.opinions(reporter, batches, now)


def wire(j, reporter, epoch=1, port=40000, start=1000, now=10.0, primary="lb1"):
    return j.wire(reporter, primary, epoch, CLIENT, port, start, start + 22, now)


def test_the_quorum_comes_from_the_voters_not_every_name():
    assert judge().quorum == 2
    assert Judge(("a", "b", "c"), 1).quorum == 2  # voters default to every name


def test_a_spares_statements_and_reports_count_for_nothing():
    j = judge()
    # lb4 (a spare) and lb3 agree on a lie against lb1's and lb2's truth: only lb3 diverges
    assert report(j, 10.0, 1000, "lb3", members=("lb1", "lb2", "lb3", "lb4")) == set()
    assert j.stats["lb3"].divergences == 1 and j.stats["lb4"].divergences == 0
    # lb4's own report of lb4 + lb3 "outvoting" lb2 is ignored outright
    batches = [batch("lb4", 2000, LIE), batch("lb3", 2000, LIE), batch("lb2", 2000, TRUE)]
    assert j.opinions("lb4", batches, 10.0) == set()
    assert j.stats["lb2"].divergences == 0 and j.stats["lb4"].reported == 0
    assert wire(j, "lb4") is False and wire(j, "lb2") is False


def test_a_convicted_liars_old_statements_cannot_frame_an_honest_member():
    """lb3 lied and left the voting set (lb4 took its place); its statements plus a second
    liar's (lb2) must not make honest lb1 the minority."""
    j = judge()
    j.voters = {"lb1", "lb2", "lb4"}
    batches = [batch("lb1", 3000, TRUE, CLAIM), batch("lb2", 3000, LIE),
               batch("lb3", 3000, LIE)]
    assert j.opinions("lb2", batches, 10.0) == set()
    assert j.stats["lb1"].divergences == 0
    assert j.opinions("lb4", [batch("lb4", 3000, TRUE)], 10.0) == set()
    assert j.stats["lb2"].divergences == 1 and j.stats["lb1"].divergences == 0


def test_a_new_generation_clears_the_replicas_undecided_opinions():
    """lb3 lied on three ranges that only lb1 had answered (undecided); it is readmitted; the
    late votes of lb2 must not score its old lies."""
    j = judge()
    for start in (1000, 2000, 3000):
        j.opinions("lb1", [batch("lb1", start, TRUE, CLAIM), batch("lb3", start, LIE)], 10.0)
    j.readmit("lb3")
    j.new_generation("lb3", 2, 10.5)
    guilty = set()
    for start in (1000, 2000, 3000):
        guilty |= j.opinions("lb1", [batch("lb1", start, TRUE, CLAIM),
                                     batch("lb2", start, TRUE)], 10.6)
    assert guilty == set() and j.stats["lb3"].divergences == 0


def test_without_a_new_generation_the_same_late_votes_convict():
    """The control of the test above: the bug the generation fixes."""
    j = judge()
    for start in (1000, 2000, 3000):
        j.opinions("lb1", [batch("lb1", start, TRUE, CLAIM), batch("lb3", start, LIE)], 10.0)
    j.readmit("lb3")
    guilty = set()
    for start in (1000, 2000, 3000):
        guilty |= j.opinions("lb1", [batch("lb1", start, TRUE, CLAIM),
                                     batch("lb2", start, TRUE)], 10.6)
    assert guilty == {"lb3"}


def test_late_statements_of_an_older_generation_score_nothing_by_their_batch():
    """lb3's lies signed before its readmission (generation 1), forwarded after it (the judge
    now knows generation 2): dropped by the batch's generation, whether or not the judge had
    heard of the connection before; its statements signed in generation 2 count as ever."""
    j = judge()
    report(j, 10.0, 1000, None, port=40001)  # connection 40001 seen, all agreed
    j.new_generation("lb3", 2, 11.0, generation=2)
    for port in (40001, 40002):  # a connection the judge knew, and one it never heard of
        for start in (2000, 3000, 4000):
            assert report(j, 11.5, start, "lb3", port=port, generations={"lb3": 1}) == set()
    assert j.stats["lb3"].divergences == 0 and j.stale == 6
    for start in (2000, 3000, 4000):
        report(j, 12.0, start, "lb3", port=40003, generations={"lb3": 2})
    assert j.stats["lb3"].divergences == 3


def test_a_liar_cannot_hide_behind_an_old_generation_after_the_grace():
    """A member that keeps signing with a generation it left long ago (an honest agent signs
    with the new one from its next heartbeat answer on) is judged like any other: dropping its
    statements would let it lie with no conviction."""
    j = judge()
    j.new_generation("lb3", 2, 11.0, generation=2)
    later = 11.0 + voting.GENERATION_GRACE_S + 0.5
    guilty = set()
    for start in (2000, 3000, 4000):
        guilty |= report(j, later, start, "lb3", port=40002, generations={"lb3": 1})
    assert guilty == {"lb3"} and j.stale == 0


def test_an_older_generations_late_lies_would_convict_without_it():
    """The control: the same late lies, signed in the generation the judge knows, convict."""
    j = judge()
    j.new_generation("lb3", 2, 11.0, generation=2)
    guilty = set()
    for start in (2000, 3000, 4000):
        guilty |= report(j, 11.5, start, "lb3", port=40002, generations={"lb3": 2})
    assert guilty == {"lb3"} and j.stale == 0


def test_an_abstention_states_no_digest():
    j = judge()
    abstain = protocol.decode(protocol.encode(
        protocol.ABSTAIN, "lb3", [Statement(CLIENT, 40000, 1000, 1022, protocol.NO_DIGEST)],
        KEYS["lb3"]))
    j.opinions("lb1", [batch("lb1", 1000, TRUE, CLAIM), abstain, batch("lb2", 1000, TRUE)],
               10.0)
    assert j.stats["lb3"].divergences == 0 and j.stats["lb1"].divergences == 0


def test_wire_reports_about_epochs_before_a_generation_are_dropped():
    j = judge()
    j.new_generation("lb1", 3, 20.0)  # lb1 (primary of epoch 1) readmitted in epoch 3
    assert wire(j, "lb2", epoch=1, now=20.5) is False
    assert wire(j, "lb3", epoch=1, now=20.5) is False
    assert j.stats["lb1"].wire_divergences == 0 and j.stale == 2
    j.new_generation("lb2", 4, 21.0)  # lb2 came back in epoch 4: its epoch-3 view is old
    assert wire(j, "lb2", epoch=3, now=21.5) is False
    assert wire(j, "lb3", epoch=3, now=21.5) is False  # alone, lb3 is one backup


def test_a_wire_report_of_the_reporters_older_generation_is_dropped_in_the_same_epoch():
    """A backup's entry changes no epoch: only the generation in its report tells a report
    made before its readmission (arriving late) from one made after."""
    j = judge()
    j.new_generation("lb2", 2, 10.5, generation=2)
    assert j.wire("lb2", "lb1", 2, CLIENT, 40000, 1000, 1022, 10.6, generation=1) is False
    assert j.wire("lb3", "lb1", 2, CLIENT, 40000, 1000, 1022, 10.7, generation=1) is False
    assert j.stale == 1 and j.stats["lb1"].wire_divergences == 0  # lb3 alone: one backup
    assert j.wire("lb2", "lb1", 2, CLIENT, 40000, 1000, 1022, 10.8, generation=2) is True


def test_a_new_generation_forgets_the_reporters_unconfirmed_wire_reports():
    j = judge()
    assert wire(j, "lb2", epoch=2, now=10.0) is False
    j.new_generation("lb2", 2, 10.5)  # (same epoch: its later reports still count)
    assert wire(j, "lb3", epoch=2, now=10.6) is False
    assert wire(j, "lb2", epoch=2, now=10.7) is True


def test_a_primary_is_convicted_on_the_wire_once_per_epoch():
    """Reports of further ranges of a convicted epoch keep arriving after the conviction
    (and after a readmission): they taint their connections but convict nobody again."""
    j = judge()
    assert wire(j, "lb2", start=1000) is False and wire(j, "lb3", start=1000) is True
    assert wire(j, "lb2", start=2000, port=40001) is False
    assert wire(j, "lb3", start=2000, port=40001) is False
    assert j.stats["lb1"].wire_divergences == 1
    assert j.tainted(1) == [(CLIENT, 40000), (CLIENT, 40001)]
    assert wire(j, "lb1", epoch=2, primary="lb2") is False  # another epoch: a new case
    assert wire(j, "lb3", epoch=2, primary="lb2") is True


def test_the_referee_tells_the_judge_the_voters_and_each_new_generation(raw):
    raw.update(mode="active", voting="on", spare=["lb4 10.0.0.14 00:00:00:00:01:04 4"],
               replica_key=[f"{n} {k.hex()}" for n, k in KEYS.items()])
    referee = Referee(build_config(raw))
    judge = referee.judge
    assert judge.voters == {"lb1", "lb2", "lb3"} and judge.quorum == 2
    assert set(judge.stats) == set(NAMES) and set(referee.auth_failures) == set(NAMES)
    judge.opinions("lb1", [batch("lb1", 1000, TRUE, CLAIM), batch("lb3", 1000, LIE)], 1.0)
    referee.sync({"lb1", "lb2", "lb4"}, {"lb1": 1, "lb2": 1, "lb3": 1, "lb4": 1},
                 {"lb4": 1}, 2.0)
    assert judge.voters == {"lb1", "lb2", "lb4"}
    assert judge.generations == {"lb1": (0, 2.0), "lb2": (0, 2.0), "lb3": (0, 2.0),
                                 "lb4": (1, 2.0)}
    referee.sync({"lb1", "lb2", "lb4"}, {"lb1": 1, "lb2": 1, "lb3": 2, "lb4": 1},
                 {"lb3": 2, "lb4": 1}, 3.0)
    assert judge.generations["lb3"] == (2, 3.0) and judge.generations["lb1"] == (0, 2.0)
