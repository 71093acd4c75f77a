"""The pytest markers the integration tests check are registered in setup.cfg (an unregistered
marker is only a warning, and a typo in one would silently never match)."""

import configparser
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_integration_markers_are_registered():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO, "setup.cfg"), encoding="utf-8")
    names = [line.split(":")[0].strip()
             for line in setup["tool:pytest"]["markers"].splitlines() if line.strip()]
    assert "integration" in names and "allow_controller_errors" in names
