"""Roles follow the switch: after a change of the service flows, heartbeat answers keep the
agents' roles ("not decided") until every service switch has answered the barrier that ends
the change, so a new primary opens its door only when the switch drops the old primary's
replies (a primary whose agent died keeps answering on its host). A switch that never answers
releases the roles after SWITCH_CONFIRM_S; one that leaves releases them at once."""

import dataclasses
import logging

import pytest

from sbft_ryu import decide
from sbft_ryu.core import SWITCH_CONFIRM_S, Core
from sbft_ryu.model import Barrier
from sbft_ryu.ofp.tables import Tables

NOW = 20.0
LOG = logging.getLogger("test.sbft.core.confirm")
ADDRESSES = ["10.254.0.11", "10.254.0.12", "10.254.0.13"]


@pytest.fixture
def nudged():
    return []


@pytest.fixture
def core(default_config, nudged):
    config = dataclasses.replace(default_config, heartbeat_timeout=0.0, startup_grace=0.0)
    core = Core(config, lambda dpid, messages: True, nudge=nudged.append, logger=LOG)
    for dpid in (1, 2):
        core.switch_connected(dpid, "1.3", LOG, NOW)
        core.tables_read(dpid, Tables(), NOW)
    core.agent_addresses.update(zip(("lb1", "lb2", "lb3"), ADDRESSES))
    core.set_ports(1, {1: True, 2: True, 3: True}, NOW)
    for dpid in (1, 2):
        core.switch_confirmed(dpid, NOW)
    nudged.clear()
    return core


def test_a_new_primary_gets_its_role_once_every_switch_acknowledged(core, nudged):
    assert core.roles_released()
    confirmed = core.counters["switch_confirmed"]
    core.port_status(1, 1, False, NOW + 1)
    assert core.cluster.view.primary == "lb2" and core.decided()
    assert not core.roles_released() and nudged == []
    core.switch_confirmed(1, NOW + 1.002)
    assert not core.roles_released() and nudged == []  # switch 2 has not answered yet
    core.switch_confirmed(2, NOW + 1.003)
    assert core.roles_released() and nudged == [ADDRESSES]
    core.switch_confirmed(2, NOW + 1.004)  # a late duplicate changes nothing
    assert nudged == [ADDRESSES] and core.counters["switch_confirmed"] == confirmed + 2


def test_a_change_that_sends_nothing_nudges_at_once(core, nudged):
    for record in core.switches.values():  # as if the switches held the next view already
        record.installed = decide.service_flows(
            core.config, dataclasses.replace(core.cluster.view, primary="lb2",
                                             members=("lb2", "lb3")), core.cookie)
    core.port_status(1, 1, False, NOW + 1)
    assert core.roles_released() and nudged == [ADDRESSES]


def test_a_switch_that_never_answers_releases_the_roles_after_a_while(core, nudged, caplog):
    core.port_status(1, 1, False, NOW + 1)
    core.switch_confirmed(1, NOW + 1.001)
    assert core.next_deadline(NOW + 1.001) == pytest.approx(NOW + 1 + SWITCH_CONFIRM_S)
    core.tick(NOW + 1 + SWITCH_CONFIRM_S / 2)
    assert not core.roles_released() and nudged == []
    core.tick(NOW + 1 + SWITCH_CONFIRM_S)
    assert core.roles_released() and nudged == [ADDRESSES]
    assert core.counters["switch_confirm_late"] == 1
    assert "no barrier reply 1.0 s after a change of the service flows" in caplog.text


def test_a_switch_that_leaves_unacknowledged_releases_the_roles(core, nudged):
    core.port_status(1, 1, False, NOW + 1)
    core.switch_confirmed(1, NOW + 1.001)
    core.switch_gone(2, NOW + 1.002)
    assert core.roles_released() and nudged[0] == ADDRESSES


def test_the_wait_counts_from_the_first_unacknowledged_change(core):
    core.port_status(1, 1, False, NOW + 1)
    core.port_status(1, 2, False, NOW + 1.5)  # a second change before any answer
    assert core.cluster.view.primary == "lb3"
    assert core.next_deadline(NOW + 1.5) == pytest.approx(NOW + 1 + SWITCH_CONFIRM_S)


def test_a_refused_batch_waits_for_nothing(default_config, nudged):
    refuse = {1}
    config = dataclasses.replace(default_config, heartbeat_timeout=0.0, startup_grace=0.0)
    core = Core(config, lambda dpid, messages: dpid not in refuse or not messages,
                nudge=nudged.append, logger=LOG)
    core.switch_connected(1, "1.3", LOG, NOW)
    refuse.clear()
    core.tables_read(1, Tables(), NOW)
    refuse.add(1)
    core.agent_addresses["lb1"] = ADDRESSES[0]
    core.set_ports(1, {1: True, 2: True, 3: True}, NOW)
    assert core.cluster.view.primary == "lb1"
    assert core.roles_released() and nudged == [[ADDRESSES[0]]]


def test_every_change_batch_ends_with_the_barrier_that_is_waited_for(core):
    wanted = decide.service_flows(core.config, core.cluster.view, core.cookie)
    batch = decide.update_batch((), wanted)
    assert batch and isinstance(batch[-1], Barrier)
