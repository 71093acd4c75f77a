"""Tests for SbftApp._ticker: it sleeps until the cluster's next deadline (plus slack), at most
MAX_TICK_S, then has the core re-evaluate liveness. Run on a fake clock with hub.sleep replaced."""

import logging
from types import SimpleNamespace

import pytest

from sbft_ryu import app as app_module
from sbft_ryu.core import Core


class Stop(Exception):
    pass


class FakeCluster:
    """next_deadline answers from a script (one per round, then stops the ticker); evaluate
    records its ``now``."""

    def __init__(self, deadlines, views=None, fail=()):
        self.deadlines = list(deadlines)
        self.views = list(views or [None] * len(self.deadlines))
        self.fail = set(fail)  # rounds whose evaluate raises
        self.asked = []
        self.evaluated = []

    def next_deadline(self, now):
        if len(self.asked) == len(self.deadlines):
            raise Stop  # the script is done: leave the endless loop
        self.asked.append(now)
        return self.deadlines[len(self.asked) - 1]

    def evaluate(self, now):
        self.evaluated.append(now)
        if len(self.evaluated) - 1 in self.fail:
            raise RuntimeError("evaluate failed")
        return self.views[len(self.evaluated) - 1]


def run_ticker(monkeypatch, cluster, default_config, start=100.0):
    """Runs _ticker for as many rounds as ``cluster`` has deadlines; returns (sleeps, changed,
    app)."""
    clock = SimpleNamespace(now=start)
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        clock.now += seconds

    monkeypatch.setattr(app_module, "time", SimpleNamespace(monotonic=lambda: clock.now))
    monkeypatch.setattr(app_module.hub, "sleep", sleep)
    app = object.__new__(app_module.SbftApp)
    changed = []
    app.logger = logging.getLogger("test.sbft.ticker")
    app.core = Core(default_config, send=None, logger=app.logger)
    app.core.cluster = cluster
    app.core._changed = lambda view, now: changed.append(view)
    with pytest.raises(Stop):
        app._ticker()
    return sleeps, changed, app


def test_constants():
    assert (app_module.TICK_SLACK_S, app_module.MAX_TICK_S) == (0.002, 0.05)


@pytest.mark.parametrize("deadline, slept", [
    (None, 0.05),  # nothing pending: the longest tick
    (100.01, 0.012),  # the deadline plus the slack
    (100.0, 0.002),  # due now: just the slack
    (99.0, 0.002),  # already passed: never less than the slack
    (100.048, 0.05),  # the slack would overshoot the longest tick
    (110.0, 0.05),  # far away: at most MAX_TICK_S
])
def test_ticker_sleeps_until_the_next_deadline(monkeypatch, default_config, deadline, slept):
    cluster = FakeCluster([deadline])
    sleeps, _, _ = run_ticker(monkeypatch, cluster, default_config)
    assert cluster.asked == [100.0]
    assert sleeps == [pytest.approx(slept)]
    assert cluster.evaluated == [pytest.approx(100.0 + slept)]  # evaluated after the sleep


def test_ticker_hands_every_evaluation_to_changed(monkeypatch, default_config):
    view = object()
    cluster = FakeCluster([None, 100.06, None], views=[None, view, None])
    sleeps, changed, _ = run_ticker(monkeypatch, cluster, default_config)
    assert changed == [None, view, None]  # _changed also logs transitions: always called
    assert sleeps == [pytest.approx(0.05), pytest.approx(0.012), pytest.approx(0.05)]
    assert cluster.asked == [100.0, pytest.approx(100.05), pytest.approx(100.062)]


def test_ticker_survives_a_failing_evaluation(monkeypatch, default_config, caplog):
    cluster = FakeCluster([None, None, None], fail={0})
    _, changed, app = run_ticker(monkeypatch, cluster, default_config)
    assert len(cluster.evaluated) == 3
    assert changed == [None, None]
    assert app.counters["handler_error"] == 1
    assert any("liveness check failed" in r.getMessage() for r in caplog.records)
