"""[sbft] coordination, leader_lease, advertise_url: parsed, checked, frozen."""

import pytest

from sbft_ryu import config, views
from sbft_ryu.config import ConfigError


def test_standalone_by_default(default_config):
    assert default_config.coordination == ()
    assert default_config.coordination_url == ""
    assert default_config.leader_lease == 2
    assert default_config.advertise_url == ""


def test_coordination_lists_the_etcd_endpoints_in_order(raw):
    raw["coordination"] = " etcd://127.0.0.1:2379, etcd2.example:22379 "
    raw["leader_lease"] = "1"
    raw["advertise_url"] = "http://10.0.0.1:8080/"
    cfg = config.build_config(raw)
    assert cfg.coordination == (("127.0.0.1", 2379), ("etcd2.example", 22379))
    assert cfg.coordination_url == "etcd://127.0.0.1:2379,etcd2.example:22379"
    assert cfg.leader_lease == 1
    assert cfg.advertise_url == "http://10.0.0.1:8080"


@pytest.mark.parametrize("option, value, message", [
    ("coordination", "http://127.0.0.1:2379",
     "[sbft] coordination = 'http://127.0.0.1:2379': expected empty, or "
     "etcd://HOST:PORT[,HOST:PORT...] (etcd's client URLs)"),
    ("coordination", "etcd://127.0.0.1",
     "[sbft] coordination = 'etcd://127.0.0.1': expected HOST:PORT with PORT 1..65535"),
    ("coordination", "etcd://h:0", "[sbft] coordination = 'etcd://h:0': expected HOST:PORT "
     "with PORT 1..65535"),
    ("coordination", "etcd://h:1,", "[sbft] coordination = 'etcd://h:1,': expected empty, or "
     "etcd://HOST:PORT[,HOST:PORT...] (etcd's client URLs)"),
    ("coordination", "etcd://h:1,h:1",
     "[sbft] coordination = 'etcd://h:1,h:1': expected distinct etcd endpoints"),
    ("leader_lease", "0", "[sbft] leader_lease = '0': expected an integer 1..3600"),
    ("leader_lease", "1.5", "[sbft] leader_lease = '1.5': expected an integer 1..3600"),
    ("advertise_url", "10.0.0.1:8080", "[sbft] advertise_url = '10.0.0.1:8080': expected an "
     "http:// or https:// base URL such as http://10.0.0.1:8080, or empty"),
])
def test_bad_coordination_options_are_one_clear_error(raw, option, value, message):
    raw[option] = value
    with pytest.raises(ConfigError) as info:
        config.build_config(raw)
    assert str(info.value) == message


def test_active_mode_with_coordination_needs_a_configured_secret(raw):
    raw.update(coordination="etcd://127.0.0.1:2379", mode="active")
    with pytest.raises(ConfigError) as info:
        config.build_config(raw)
    assert str(info.value) == ("[sbft] active_secret = '': expected a configured secret (the "
                               "same on every controller) when mode = active and coordination "
                               "is set")
    raw["active_secret"] = "11" * 16
    assert config.build_config(raw).active_secret == b"\x11" * 16


def test_load_config_derives_the_advertised_url_from_the_rest_address_only_with_coordination(
        tmp_path):
    from oslo_config import cfg

    path = tmp_path / "c.conf"
    path.write_text("[sbft]\ncoordination = etcd://127.0.0.1:2379\n")
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf.register_opts([cfg.StrOpt("wsapi_host", default="10.1.2.3"),
                        cfg.IntOpt("wsapi_port", default=8081)])
    conf(args=["--config-file", str(path)], default_config_files=[], default_config_dirs=[])
    assert config.load_config(conf).advertise_url == "http://10.1.2.3:8081"
    assert config.default_advertise_url("", 8080).startswith("http://")
    assert config.default_advertise_url("", 8080) != "http://:8080"


def test_health_and_heartbeat_answers_carry_the_controller_block(default_config):
    assert views.controller_view(default_config) == {
        "role": "standalone", "leader": None, "coordination": "", "term": 0,
        "reason": "coordination is empty: this controller alone"}
    status = ("follower", "http://c1:8080", 7, "following")
    assert views.controller_view(default_config, status)["term"] == 7
    from sbft_ryu.cluster import ClusterState

    cluster = ClusterState(default_config.replicas, 0.15, 1.0)
    reply = views.heartbeat_reply(default_config, cluster, "lb1", controller=status)
    assert reply["controller"] == {"role": "follower", "term": 7}
