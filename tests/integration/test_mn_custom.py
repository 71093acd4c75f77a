"""The README's two lines, as a newcomer runs them: ``ryu-manager sbft_ryu.app`` with its
embedded defaults, and ``mn --custom mininet/sbft_topo.py --topo sbft,... --controller sbft,...``.

The ``mn`` binary itself never runs here: on any exception or Ctrl-C it runs Mininet's cleanup,
which kills every ryu-manager on the machine by name and deletes every OVS bridge. The test
does what ``mn`` does with those options instead: it exec()s the custom file into a fresh
namespace, merges its ``topos`` and ``controllers`` into mn's own tables (read from the ``mn``
script), builds the classes from the README's option strings with Mininet's ``buildTopo`` and
``customClass``, and starts a ``Mininet`` with mn's defaults. Both lines are read from the
README, so the test fails when the README's commands stop working.
"""

import contextlib
import os
import re
import runpy
import shlex
import shutil
import signal
import socket
import subprocess

from sbft_ryu import store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, "README.md")
REQUESTS = 20


def readme_commands():
    """The README's controller line and its ``mn --custom`` line (continuations joined,
    comments dropped), as argument lists."""
    with open(README, encoding="utf-8") as handle:
        text = handle.read().replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in text.splitlines()]
    ryu = [line for line in lines if re.match(r"^\S*ryu-manager sbft_ryu\.app$", line)]
    mn = [line for line in lines if line.startswith("mn --custom ")]
    assert ryu, "README.md shows no plain `ryu-manager sbft_ryu.app` line"
    assert len(mn) == 1, f"README.md should show one `mn --custom` line, found {mn}"
    return shlex.split(ryu[0]), shlex.split(mn[0])


def mn_options(argv):
    options = dict(zip(argv[1::2], argv[2::2]))
    assert set(options) == {"--custom", "--topo", "--switch", "--controller"}, options
    return options


def port_taken(port):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def build_as_mn_does(options):
    """``mn --custom F --topo T --switch S --controller C``, up to ``net.start()``."""
    from mininet.net import Mininet
    from mininet.util import buildTopo, customClass

    tables = runpy.run_path(shutil.which("mn"), run_name="mn_tables")  # its tables, not main
    custom = os.path.join(REPO, options["--custom"])
    customs = {}
    with open(custom, encoding="utf-8") as handle:
        exec(compile(handle.read(), options["--custom"], "exec"), customs, customs)  # noqa: S102
    for name in ("topos", "switches", "hosts", "controllers", "links"):
        tables[name.upper()].update(customs.get(name, {}))
    topo = buildTopo(tables["TOPOS"], options["--topo"])
    return Mininet(topo=topo, switch=customClass(tables["SWITCHES"], options["--switch"]),
                   host=customClass(tables["HOSTS"], tables["HOSTDEF"]),
                   controller=[customClass(tables["CONTROLLERS"], options["--controller"])],
                   link=customClass(tables["LINKS"], tables["LINKDEF"]), ipBase="10.0.0.0/8",
                   inNamespace=False, xterms=False, autoSetMacs=False, autoStaticArp=False,
                   autoPinCpus=False, waitConnected=False, listenPort=6654)


def test_the_readme_lines_give_a_tier_that_answers(topo_module, tmp_path):
    ryu_argv, mn_argv = readme_commands()
    options = mn_options(mn_argv)
    assert options["--controller"].startswith("sbft,")  # the class without the telnet check
    lock = topo_module.take_lab_lock()  # a network outside Lab: one lab per machine
    ryu = net = None
    rundirs = []
    # the README's controller keeps its state where a newcomer's would (the default path);
    # a file this test created there goes with the test
    state = store.default_path()
    state_existed, directory_existed = os.path.exists(state), os.path.isdir(
        os.path.dirname(state))
    try:
        for port in (6653, 8080):  # the README's controller uses Ryu's default ports
            assert not port_taken(port), f"port {port} is in use: the README's " \
                "ryu-manager needs it (another controller running?)"
        with open(tmp_path / "ryu-manager.log", "wb") as log:
            ryu = subprocess.Popen([os.path.join(REPO, ryu_argv[0]), *ryu_argv[1:]],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        api = "http://127.0.0.1:8080"
        topo_module.wait_until(lambda: topo_module.http_json(api + "/sbft/health"), 20, 0.1,
                               "ryu-manager's REST API")
        net = build_as_mn_does(options)
        rundirs = [host.rundir for host in net.hosts if hasattr(host, "rundir")]
        net.start()

        def primary_and_every_replica_up():
            health = topo_module.http_json(api + "/sbft/health")
            return health if health["primary"] and health["status"] == "ok" else None

        health = topo_module.wait_until(primary_and_every_replica_up, 30, 0.1,
                                        "a primary with every replica up (agents' heartbeats)")
        assert health["primary"] in ("lb1", "lb2", "lb3")
        client = net.get("c1")
        answers = []
        for i in range(REQUESTS):
            out = client.cmd(f"curl -s -m 2 -w ' %{{http_code}}' "
                             f"http://10.0.0.100:5555/readme-{i}").strip()
            answers.append(out)
        assert all(re.fullmatch(rf"b[12] /readme-{i}\s+200", answer)
                   for i, answer in enumerate(answers)), answers
    finally:
        if net is not None:
            for host in net.hosts:  # agents and proxies must not outlive their interfaces
                for key in list(getattr(host, "owned", {})):
                    host.kill(key, signal.SIGTERM)
            net.stop()
        topo_module.stop_process(ryu)
        lock.close()
        if not state_existed and os.path.exists(state):
            os.unlink(state)
        if not directory_existed and os.path.isdir(os.path.dirname(state)):
            with contextlib.suppress(OSError):  # (only if empty)
                os.rmdir(os.path.dirname(state))
        for path in rundirs:
            shutil.rmtree(path, ignore_errors=True)
    log = (tmp_path / "ryu-manager.log").read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and "OFPErrorMsg" not in log, log[-2000:]
