"""The app and its state file: a real SbftApp built through Ryu's CONF (no ryu-manager)
writes its state where state_file says, takes it up again, and refuses one it cannot use with
one line and exit status 2, before any switch is touched."""

import json
import logging
import os
import stat

import pytest
from ryu.app.wsgi import WSGIApplication

from sbft_ryu import app as app_module
from sbft_ryu import views
from sbft_ryu.cluster import ClusterState


@pytest.fixture
def build(tmp_path):
    conf = app_module.CONF
    conf(args=[], default_config_files=[], default_config_dirs=[])
    path = tmp_path / "run" / "state.json"

    def start(state_file=str(path), **overrides):
        conf.set_override("state_file", state_file, group="sbft")
        for name, value in overrides.items():
            conf.set_override(name, value, group="sbft")
        return app_module.SbftApp(wsgi=WSGIApplication())
    yield start, path
    for name in ("state_file", "mode", "active_secret"):
        conf.clear_override(name, group="sbft")


def test_a_first_start_writes_the_state_with_mode_0600_and_a_restart_takes_it_up(build):
    start, path = build
    first = start(mode="active")
    assert first.core.store.path == str(path)
    state = json.loads(path.read_text())
    assert state["version"] == 1 and state["cluster"]["epoch"] == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert state["active_secret"] == first.config.active_secret.hex()
    again = start(mode="active")
    assert again.config.active_secret == first.config.active_secret  # kept, not random


def test_an_empty_state_file_keeps_nothing(build):
    start, path = build
    sbft = start(state_file="")
    assert sbft.core.store.path is None and not path.parent.exists()


@pytest.mark.parametrize("content, reason", [("{", "corrupt"),
                                             ('{"version": 7}', "is newer than")])
def test_a_state_file_that_cannot_be_used_stops_the_app_with_one_line(build, content, reason,
                                                                      caplog):
    start, path = build
    path.parent.mkdir()
    path.write_text(content)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as info:
        start()
    assert info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"sbft: state file {path}: ")
    assert reason in errors[0]


def test_an_unwritable_directory_stops_the_app_with_one_line(build, tmp_path, caplog):
    start, _ = build
    (tmp_path / "file").write_text("x")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):
        start(state_file=str(tmp_path / "file" / "state.json"))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "directory not writable" in errors[0]


def test_heartbeat_answers_and_health_say_whether_the_view_is_decided(default_config):
    cluster = ClusterState(default_config.replicas, 0.15)
    assert views.heartbeat_reply(default_config, cluster, "lb1", decided=False)[
        "decided"] is False
    assert views.heartbeat_reply(default_config, cluster, "lb1")["decided"] is True
    assert views.health_view(default_config, cluster, {}, 0.0, decided=False)[
        "decided"] is False
