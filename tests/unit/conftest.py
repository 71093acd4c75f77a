"""Shared fixtures for the unit tests: the embedded [sbft] defaults as oslo would return them."""

import pytest

from sbft_ryu import config

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
