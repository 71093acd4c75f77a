"""Tests for the lab's pure parts (sbft_lab.lab): the [sbft] config file a Lab writes for its
ryu-manager. No root, no Mininet network; the topology file is loaded as the lab loads it.
"""

import configparser
import io
import os
import sys

import pytest
from oslo_config import cfg

from sbft_ryu import config

pytest.importorskip("mininet.net")

from sbft_lab import lab as lab_module  # noqa: E402  (loads the topology: needs Mininet)

topo = lab_module.topo
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_text(tmp_path, text):
    path = tmp_path / "sbft.conf"
    path.write_text(text, encoding="utf-8")
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(args=["--config-file", str(path)], default_config_files=[], default_config_dirs=[])
    return config.load_config(conf)


# --- the [sbft] config text -----------------------------------------------------------------


def test_config_text_for_three_replicas_matches_the_embedded_defaults(tmp_path, default_config):
    loaded = load_text(tmp_path, lab_module.sbft_config_text(topo.plan(3, 2, 1)))
    assert loaded.replicas == default_config.replicas
    assert (loaded.vip, loaded.vmac, loaded.service_port) == (
        default_config.vip, default_config.vmac, default_config.service_port)
    assert loaded == default_config


def test_config_text_configures_the_last_replicas_as_spares(tmp_path):
    loaded = load_text(tmp_path, lab_module.sbft_config_text(topo.plan(4, 1, 1), spares=1))
    assert [r.name for r in loaded.replicas] == ["lb1", "lb2", "lb3"]
    assert [r.name for r in loaded.spares] == ["lb4"] and loaded.f == 1


def test_config_text_appends_extra(tmp_path):
    text = lab_module.sbft_config_text(topo.plan(2, 1, 1), "heartbeat_timeout = 0\n")
    loaded = load_text(tmp_path, text)
    assert [r.name for r in loaded.replicas] == ["lb1", "lb2"]
    assert loaded.heartbeat_timeout == 0.0


# --- Lab: the controller's config file ------------------------------------------------------


class ConfigWritten(Exception):
    pass


def lab_config(tmp_path, monkeypatch, **kwargs):
    """The sbft.conf Lab.start writes (start_ryu is stopped before anything runs)."""
    def start_ryu(rundir, ofp_port, wsapi_port, config_path=None, extra_args=()):
        raise ConfigWritten(config_path)
    monkeypatch.setattr(lab_module, "start_ryu", start_ryu)
    # no lab runs here: waiting for another process's lab would only stall a unit test
    monkeypatch.setattr(lab_module, "take_lab_lock", lambda: io.StringIO())
    lab = lab_module.Lab(rundir=str(tmp_path), **kwargs)
    with pytest.raises(ConfigWritten) as info:
        lab.start()
    assert info.value.args[0] == str(tmp_path / "sbft.conf")
    return (tmp_path / "sbft.conf").read_text(encoding="utf-8")


PINS = "".join(f"replica_source = lb{i} 10.254.0.1{i}\n" for i in (1, 2, 3))


def port_free(text):
    """The config text with its (random, free) heartbeat_port line taken out, and the port."""
    lines = text.splitlines(keepends=True)
    ports = [line for line in lines if line.startswith("heartbeat_port = ")]
    assert len(ports) == 1
    return "".join(line for line in lines if line not in ports), int(ports[0].split()[-1])


def test_lab_gives_a_generous_startup_grace_unless_told(tmp_path, monkeypatch):
    text = lab_config(tmp_path, monkeypatch, lbs=2)
    rest, port = port_free(text)
    assert rest == lab_module.sbft_config_text(topo.plan(2, 2, 1),
                                               "startup_grace = 10\n" + PINS[:-33])
    loaded = load_text(tmp_path, text)
    assert (loaded.startup_grace, loaded.heartbeat_port) == (10.0, port)
    assert loaded.replica_sources == {"lb1": "10.254.0.11", "lb2": "10.254.0.12"}


def test_lab_keeps_the_extra_options_after_the_grace(tmp_path, monkeypatch):
    text = lab_config(tmp_path, monkeypatch, sbft_extra="mode = active\n")
    assert port_free(text)[0].endswith("startup_grace = 10\n" + PINS + "mode = active\n")
    loaded = load_text(tmp_path, text)
    assert (loaded.startup_grace, loaded.mode) == (10.0, "active")


def test_lab_takes_a_given_startup_grace(tmp_path, monkeypatch):
    text = lab_config(tmp_path, monkeypatch, sbft_extra="startup_grace = 0.5\n")
    assert port_free(text)[0] == lab_module.sbft_config_text(
        topo.plan(3, 2, 1), PINS + "startup_grace = 0.5\n")
    assert text.count("startup_grace") == 1


def test_lab_with_keys_pins_nothing_and_keys_every_replica(tmp_path, monkeypatch):
    loaded = load_text(tmp_path, lab_config(tmp_path, monkeypatch, keys=True))
    assert sorted(loaded.replica_keys) == ["lb1", "lb2", "lb3"]
    assert loaded.replica_sources == {} and loaded.mode == "passive"


def test_every_controller_the_lab_starts_keeps_its_state_in_its_run_directory(tmp_path,
                                                                             monkeypatch):
    started = []
    monkeypatch.setattr(lab_module.subprocess, "Popen",
                        lambda argv, **kwargs: started.append(argv))
    (tmp_path / "my.conf").write_text("[sbft]\nreplica =\n")
    lab_module.start_ryu(str(tmp_path), 1, 2, str(tmp_path / "my.conf"))
    (argv,) = started
    files = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--config-file"]
    assert files == [str(tmp_path / "state.conf"), str(tmp_path / "my.conf")]
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(args=[a for f in files for a in ("--config-file", f)], default_config_files=[],
         default_config_dirs=[])
    assert config.load_config(conf).state_file == str(tmp_path / "state.json")
    (tmp_path / "off.conf").write_text("[sbft]\nreplica =\nstate_file =\n")  # later wins
    conf(args=["--config-file", files[0], "--config-file", str(tmp_path / "off.conf")],
         default_config_files=[], default_config_dirs=[])
    assert config.load_config(conf).state_file == ""


def test_lab_baseline_config_has_no_replicas_and_no_grace(tmp_path, monkeypatch):
    text = lab_config(tmp_path, monkeypatch, vip_mode="keepalived")
    assert text == "[sbft]\nreplica =\n"


# --- where the lab lives ------------------------------------------------------------------


def test_the_lab_loads_the_topology_file_of_its_checkout():
    from sbft_lab import topology

    assert topology.TOPO_PATH == os.path.join(REPO, "mininet", "sbft_topo.py")
    assert topo.__file__ == topology.TOPO_PATH
    assert topology.load() is topo  # once per process


def test_a_missing_topology_file_says_how_to_install_the_lab(tmp_path, monkeypatch):
    from sbft_lab import topology

    monkeypatch.delitem(sys.modules, topology.MODULE_NAME)
    missing = tmp_path / "sbft_topo.py"
    with pytest.raises(ImportError) as info:
        topology.load(str(missing))
    assert str(info.value) == (f"{missing} is missing: sbft_lab must be installed editable "
                               "from its checkout (./run.sh setup runs pip install -e "
                               "mininet/lab)")
    assert topology.MODULE_NAME not in sys.modules


def test_the_runtime_package_ships_no_lab_code_and_needs_no_scapy():
    import importlib.util

    assert importlib.util.find_spec("sbft_ryu.tools") is None
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO, "setup.cfg"), encoding="utf-8")
    runtime = setup["options"]["install_requires"]
    extras = setup["options.extras_require"]
    assert "scapy" not in runtime
    assert "scapy" in extras["test"] and "scapy" in extras["bench"]
    assert setup["options.packages.find"]["include"].split(", ") == ["sbft_ryu", "sbft_ryu.*"]



def test_a_failed_start_releases_the_lab_lock(tmp_path, monkeypatch):
    """A lock left held by a failed start stalls every other lab (and test) on the machine
    for the lock's whole wait, this process's next Lab included."""
    path = str(tmp_path / "lab.lock")
    take = lab_module.take_lab_lock
    monkeypatch.setattr(lab_module, "take_lab_lock", lambda: take(path, timeout=1))

    def start_ryu(*args, **kwargs):
        raise ConfigWritten()
    monkeypatch.setattr(lab_module, "start_ryu", start_ryu)
    lab = lab_module.Lab(rundir=str(tmp_path))
    with pytest.raises(ConfigWritten):
        lab.start()
    assert lab._lock is None
    take(path, timeout=0).close()  # free: taken at once (a held lock would raise TimeoutError)


def test_free_ports_lie_below_the_ephemeral_range(tmp_path, monkeypatch):
    """(a restarted controller reuses its ports: nothing may take them meanwhile)"""
    ranges = tmp_path / "range"
    ranges.write_text("32768\t60999\n")
    monkeypatch.setattr(lab_module, "EPHEMERAL_RANGE", str(ranges))
    ports = {lab_module.free_port() for _ in range(20)}
    assert all(20768 <= port < 32768 for port in ports) and len(ports) > 1
