"""The README's configuration example loads as written (a newcomer copies it first)."""

import os
import re

from oslo_config import cfg

from sbft_ryu import config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_readme_config_example_loads(tmp_path, default_config):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        blocks = re.findall(r"```ini\n(.*?)```", handle.read(), re.S)
    assert len(blocks) == 1
    path = tmp_path / "readme.conf"
    path.write_text(blocks[0], encoding="utf-8")
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(args=["--config-file", str(path)], default_config_files=[], default_config_dirs=[])
    loaded = config.load_config(conf)
    assert loaded.replicas == default_config.replicas
    assert (loaded.vip, loaded.service_port, loaded.mode) == ("10.0.0.100", 5555, "passive")
