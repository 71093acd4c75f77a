"""Shared fixtures for the unit tests: the embedded [sbft] defaults as oslo would return them,
the agent's packet-thread clock, the environment that allows the agent's test-only options."""

import types

import pytest

from sbft_ryu import config, store
from sbft_ryu.agent import nfq

# The registered defaults, as oslo returns them: strings (StrOpt), a list of strings (MultiStrOpt).
DEFAULT_RAW = {
    "flows_file": "",
    "vip": "10.0.0.100",
    "vmac": "02:00:0a:00:00:64",
    "service_port": "5555",
    "replica": list(config.DEFAULT_REPLICAS),
    "spare": [],
    "spare_after": "5",
    "dpid": "",
    "heartbeat_timeout": "0.15",
    "heartbeat_interval": "0.05",
    "startup_grace": "1.0",
    "agent_notify_port": "5556",
    "service_priority": "40000",
    "mode": "passive",
    "active_secret": "",
    "active_wscale": "7",
    "replica_key": [],
    "voting": "off",
    "vote_port": "5557",
    "vote_hold": "0.2",
    "suspicion_threshold": "3",
    "suspicion_half_life": "5",
    "suspicion_rate": "0.01",
    "unvoted": "serve",
    "replica_source": [],
    "heartbeat_port": "5558",
    "api_token_file": "",
    "state_file": None,
    "coordination": "",
    "leader_lease": "2",
    "advertise_url": "",
}


@pytest.fixture
def raw():
    """A fresh raw option dict holding the embedded defaults (safe to modify)."""
    return {key: list(value) if isinstance(value, list) else value
            for key, value in DEFAULT_RAW.items()}


@pytest.fixture
def default_config(raw):
    """The SbftConfig of the embedded defaults: lb1..lb3 on ports 1..3, VIP 10.0.0.100:5555."""
    return config.build_config(raw)


@pytest.fixture
def test_faults_allowed(monkeypatch):
    """The environment of the lab, the tests and the benchmarks: the agent's test-only
    options (--emulate-skew, --fault) are allowed."""
    monkeypatch.setenv("SBFT_TEST_FAULTS", "1")


@pytest.fixture
def clock(monkeypatch):
    """nfq's monotonic clock, under the test's control (nfq.time only, not the time module):
    a one-item list, the time now."""
    now = [1000.0]
    monkeypatch.setattr(nfq, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


@pytest.fixture(autouse=True)
def state_in_tmp(monkeypatch, tmp_path_factory):
    """The default state file of every app a test builds lives in the test's tmp_path (as
    root the real default is /var/lib/sbft_ryu, shared by every run on the machine)."""
    directory = tmp_path_factory.mktemp("state")
    monkeypatch.setattr(store, "default_path", lambda: str(directory / "state.json"))
