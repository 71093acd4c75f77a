"""More tests for the rate condition of sbft_ryu.voting.Judge: a replica is convicted only when
its decaying divergence count reaches both the threshold and ``rate`` times the ranges it took
part in lately (compared_mass: the f-th largest of the OTHER replicas' decayed counts). Time is
passed in."""

import math

import pytest

from sbft_ryu import protocol
from sbft_ryu.protocol import CLAIM, VOTE, Statement
from sbft_ryu.voting import Judge

NAMES = ("lb1", "lb2", "lb3")
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(NAMES, 1)}
CLIENT = bytes([10, 0, 0, 31])
TRUE = protocol.digest(b"HTTP/1.0 200 OK\r\n\r\nhi")
LIE = protocol.digest(b"HTTP/1.0 200 OK\r\n\r\nXX")


def batch(author, statement, kind=VOTE):
    return protocol.decode(protocol.encode(kind, author, [statement], KEYS[author]))


def evidence(start, liar="lb3", primary="lb1"):
    """Every replica's statement on one range, ``liar`` disagreeing with the other two."""
    return [batch(name, Statement(CLIENT, 40000, start, start + 22,
                                  LIE if name == liar else TRUE),
                  CLAIM if name == primary else VOTE) for name in NAMES]


class Tier:
    """A judge and the running totals the agents report (claims + votes) in heartbeats."""

    def __init__(self, names=NAMES, f=1, **kwargs):
        self.judge = Judge(names, f, **{"threshold": 3.0, "half_life": 5.0, "rate": 0.02,
                                        **kwargs})
        self.totals = dict.fromkeys(names, 0)
        for name in names:
            self.judge.compared(name, 0, 0.0)  # the baselines

    def count(self, now, **added):
        for name, n in added.items():
            self.totals[name] += n
            self.judge.compared(name, self.totals[name], now)

    def everyone_compares(self, n, now):
        self.count(now, **dict.fromkeys(self.judge.names, n))

    def lie(self, start, now, liar="lb3"):
        return self.judge.opinions("lb1", evidence(start, liar), now)


def test_an_honest_minority_under_the_rate_is_never_convicted_past_the_threshold():
    """1 % divergent ranges (a Date header) against a 2 % rate, for 100 s: the decaying count
    goes well past the threshold, the rate condition keeps it innocent."""
    tier = Tier()
    top = 0.0
    for second in range(1, 101):
        now = float(second)
        tier.everyone_compares(100, now)
        assert tier.lie(1000 * second, now) == set()
        top = max(top, tier.judge.suspicion("lb3", now))
    assert tier.judge.stats["lb3"].divergences == 100
    assert top > 2 * tier.judge.threshold  # far past the count threshold
    assert tier.judge.divergence_rate("lb3", 100.0) < tier.judge.rate
    assert tier.judge.divergence_rate("lb3", 100.0) == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("history, expected", [(0, 3), (50, 3), (1000, 21), (5000, 103)])
def test_a_liar_at_100_percent_is_convicted_at_max_of_threshold_and_rate_times_mass(
        history, expected):
    """After ``history`` ranges the tier agreed on, the liar diverges on every range: each
    one adds to the others' counts and to its own suspicion, so it is convicted at the first n
    with n >= max(threshold, rate * (history + n))."""
    tier = Tier()
    tier.everyone_compares(history, 10.0)
    first = next(n for n in range(1, 10**6)
                 if n >= max(3.0, 0.02 * (history + n)))
    assert first == expected
    for n in range(1, expected + 1):
        tier.everyone_compares(1, 10.0)  # one more range compared, at the same moment
        guilty = tier.lie(100000 + 100 * n, 10.0)
        assert guilty == ({"lb3"} if n == expected else set()), n
    assert tier.judge.stats["lb3"].divergences == expected
    assert expected == pytest.approx(max(3, 0.02 * history), abs=0.03 * history + 1)


def test_the_liars_own_inflated_count_cannot_dilute_its_record():
    tier = Tier()
    tier.count(10.0, lb3=10**9)  # it claims to have compared a billion ranges
    assert tier.judge.compared_mass("lb3", 10.0) == 0.0
    assert [tier.lie(1000 * n, 10.0) for n in range(1, 4)] == [set(), set(), {"lb3"}]


def test_its_inflated_count_dilutes_only_the_others_by_the_f_th_largest_rule():
    """With f = 1 the largest other count is used: a liar inflating its own count cannot
    protect itself, only raise the bar for another replica (at most f liars)."""
    tier = Tier()
    tier.count(10.0, lb1=100, lb2=100, lb3=10**6)
    assert tier.judge.compared_mass("lb3", 10.0) == 100.0
    assert tier.judge.compared_mass("lb1", 10.0) == 10**6


def test_an_accomplices_inflated_count_cannot_dilute_the_liars_record():
    """n = 5, f = 2: the liar and one accomplice both inflate; the 2nd largest of the others'
    counts is an honest one."""
    names = ("a", "b", "c", "d", "e")
    tier = Tier(names, f=2)
    tier.count(10.0, a=10**6, b=10**6, c=100, d=100, e=100)
    assert tier.judge.compared_mass("a", 10.0) == 100.0
    guilty = set()
    for n in range(3):
        start = 1000 * (n + 1)
        said = [protocol.decode(protocol.encode(VOTE, name, [  # (verified by the referee)
            Statement(CLIENT, 40000, start, start + 22, LIE if name == "a" else TRUE)],
            bytes([i]) * 16)) for i, name in enumerate(names, 1)]
        guilty = tier.judge.opinions("c", said, 10.0)  # 4 agree: the quorum is n - f = 3
    assert guilty == {"a"} and tier.judge.stats["a"].divergences == 3


def test_counts_decay_with_the_half_life_so_an_old_history_protects_no_one():
    tier = Tier(half_life=5.0)
    tier.everyone_compares(1000, 10.0)
    assert tier.judge.compared_mass("lb3", 10.0) == 1000.0
    assert tier.judge.compared_mass("lb3", 15.0) == pytest.approx(500.0)
    assert tier.judge.compared_mass("lb3", 35.0) == pytest.approx(1000.0 / 32)
    # five half-lives later, 0.02 * 31.25 < 3: the threshold alone decides
    assert [tier.lie(1000 * n, 35.0) for n in range(1, 4)] == [set(), set(), {"lb3"}]


def test_new_counts_add_to_the_decayed_mass():
    tier = Tier(half_life=5.0)
    tier.count(10.0, lb1=100)
    tier.count(15.0, lb1=100)  # the first 100 decayed to 50
    assert tier.judge.compared_mass("lb3", 15.0) == pytest.approx(150.0)
    assert tier.judge.compared_mass("lb3", 20.0) == pytest.approx(75.0)
    tier.count(20.0, lb1=0)  # the same total again: nothing new
    assert tier.judge.compared_mass("lb3", 20.0) == pytest.approx(75.0)


def test_an_agent_restart_counts_its_new_total_afresh():
    judge = Judge(NAMES, 1, half_life=5.0)
    judge.compared("lb1", 5000, 10.0)  # baseline
    judge.compared("lb1", 5100, 10.0)
    judge.compared("lb1", 40, 10.0)  # restarted: 40 since
    assert judge.compared_mass("lb3", 10.0) == 140.0
    judge.compared("lb1", 100, 10.0)  # then only the increase from the new total
    assert judge.compared_mass("lb3", 10.0) == 200.0
    judge.compared("lb1", 0, 10.0)  # restarted, nothing yet
    judge.compared("lb1", 7, 10.0)
    assert judge.compared_mass("lb3", 10.0) == 207.0


def test_a_restart_never_subtracts_from_the_mass():
    tier = Tier()
    tier.everyone_compares(1000, 10.0)
    for name in NAMES:
        tier.judge.compared(name, 3, 10.0)  # every agent restarted
    assert tier.judge.compared_mass("lb3", 10.0) == 1003.0
    for n in range(1, 20):  # still 2 % of ~1000 needed
        assert tier.lie(1000 * n, 10.0) == set()


def test_the_divergence_rate_is_suspicion_over_the_mass():
    tier = Tier(half_life=5.0)
    tier.everyone_compares(400, 10.0)
    for n in range(1, 3):
        tier.lie(1000 * n, 10.0)
    assert tier.judge.divergence_rate("lb3", 10.0) == pytest.approx(2 / 400)
    # both decay with the same half-life: the rate stays while no new counts arrive
    assert tier.judge.divergence_rate("lb3", 15.0) == pytest.approx(2 / 400)
    assert tier.judge.divergence_rate("lb1", 10.0) == 0.0


def test_a_rate_of_zero_is_the_plain_threshold():
    tier = Tier(rate=0.0)
    tier.everyone_compares(10**6, 10.0)
    assert [tier.lie(1000 * n, 10.0) for n in range(1, 4)] == [set(), set(), {"lb3"}]


def test_the_steady_state_of_the_decaying_counts():
    """Per second, r ranges and d divergences with half-life h: the counts approach
    x / (1 - 2**(-1/h)), so their ratio approaches d / r."""
    tier = Tier(half_life=5.0, threshold=10**6)  # never convict: look at the numbers
    for second in range(1, 121):
        now = float(second)
        tier.everyone_compares(50, now)
        for k in range(2):
            tier.lie(100000 * second + 100 * k, now)
    factor = 1 / (1 - math.pow(0.5, 1 / 5.0))
    assert tier.judge.compared_mass("lb3", 120.0) == pytest.approx(50 * factor, rel=1e-3)
    assert tier.judge.suspicion("lb3", 120.0) == pytest.approx(2 * factor, rel=1e-3)
    assert tier.judge.divergence_rate("lb3", 120.0) == pytest.approx(0.04, rel=1e-3)
