"""Who may speak to the controller, in Mininet (issue 13): a real forger on the management
network cannot keep a crashed primary up nor fail a live one; keyed agents beat over UDP in
passive, active and voting mode, and forged datagrams change nothing."""

import json
import os
import re
import sys
import time
import urllib.request

import pytest

FAILOVER_S = 1.0  # generous: the heartbeat timeout is 0.15 s


def _controller_counter(lab, event):
    with urllib.request.urlopen(lab.api + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^sbft_controller_total\{event="%s"\} (\S+)$' % event, text, re.M)
    return float(match.group(1)) if match else 0.0


def _replica(lab, name):
    return next(r for r in lab.health()["replicas"] if r["name"] == name)


def _forge(lab, host, name, out, service_ok, duration, udp=False):
    """Start a forger in ``host`` (its management address) speaking for ``name``."""
    port = lab.health()["security"]["heartbeat_port"]
    argv = [sys.executable, "-m", "sbft_lab.forger", "--controller",
            f"http://10.254.0.254:{lab.wsapi_port}", "--name", name, "--service-ok",
            "true" if service_ok else "false", "--duration", str(duration),
            "--out", os.path.join(lab.host(host).rundir, out)]
    if udp:
        argv += ["--udp-port", str(port)]
    return lab.host(host).spawn(out, argv), os.path.join(lab.host(host).rundir, out)


def _forged(proc, path):
    proc.wait(timeout=30)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_a_forger_can_neither_keep_a_crashed_primary_up_nor_fail_a_live_one(lab_factory,
                                                                            topo_module):
    lab = lab_factory(agents=True)  # keyless replicas, pinned to their management addresses
    assert lab.health()["security"]["unauthenticated_replicas"] == []
    proc, out = _forge(lab, "lb2", "lb1", "keep-alive.json", True, 3.0)
    time.sleep(0.5)
    crashed_at = time.monotonic()
    lab.crash("lb1")
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 10, 0.01, "failover")
    took = time.monotonic() - crashed_at
    assert took < FAILOVER_S, f"failover took {took:.3f} s with a forger speaking for lb1"
    forged = _forged(proc, out)
    assert set(forged["http"]) == {"403"} and forged["http"]["403"] > 20, forged
    lb1 = _replica(lab, "lb1")
    assert (lb1["state"], lb1["down_reason"]) == ("down", "heartbeat silence")

    epoch = lab.health()["epoch"]
    proc, out = _forge(lab, "lb3", "lb2", "fail-live.json", False, 2.0)
    forged = _forged(proc, out)
    assert set(forged["http"]) == {"403"}, forged
    health = lab.health()
    assert (health["primary"], health["epoch"]) == ("lb2", epoch), "a forged failure counted"
    assert _replica(lab, "lb2")["service_ok"] is True
    assert lab.curl("c1", "/after")[0] == 200


@pytest.mark.parametrize("mode", ["passive", "active", "voting"])
def test_keyed_agents_beat_over_udp_and_forged_datagrams_change_nothing(lab_factory,
                                                                       topo_module, mode):
    options = {"voting": True} if mode == "voting" else {
        "keys": True, "sbft_extra": "mode = active\n" if mode == "active" else ""}
    lab = lab_factory(agents=True, **options)
    assert lab.health()["mode"] == ("passive" if mode == "passive" else "active")
    udp, total = _controller_counter(lab, "heartbeat_udp"), _controller_counter(lab, "heartbeat")
    time.sleep(2.0)
    udp = _controller_counter(lab, "heartbeat_udp") - udp
    total = _controller_counter(lab, "heartbeat") - total
    # 3 agents at 20 beats/s for 2 s: about 120, nearly all over UDP
    assert udp >= 60 and udp >= 0.8 * total, (udp, total)
    assert all(lab.curl("c1", f"/{mode}/{n}")[0] == 200 for n in range(5))  # (active: the
    # agents opened the sealed secret: a wrong one would break every connection's ISN)

    rejected = _controller_counter(lab, "heartbeat_udp_rejected")
    epoch = lab.health()["epoch"]
    proc, out = _forge(lab, "lb2", "lb1", "udp.json", False, 2.0, udp=True)
    forged = _forged(proc, out)
    assert forged["udp_sent"] > 20 and forged["udp_answers"] == 0, forged
    assert set(forged["http"]) == {"401"}, forged  # (the one HTTP try that learnt a nonce)
    assert _controller_counter(lab, "heartbeat_udp_rejected") - rejected >= forged["udp_sent"]
    health = lab.health()
    assert (health["primary"], health["epoch"]) == ("lb1", epoch)
    assert _replica(lab, "lb1")["service_ok"] is True

    crashed_at = time.monotonic()
    lab.crash("lb1")
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 10, 0.01, "failover")
    assert time.monotonic() - crashed_at < FAILOVER_S
    assert lab.curl("c1", "/after")[0] == 200


def _readmit(lab, name, token=None, host=None):
    """POST readmit from the root namespace (loopback) or from a Mininet host over the
    management network; returns (status, headers text, body)."""
    auth = f"-H 'Authorization: Bearer {token}' " if token else ""
    if host is None:
        url, run = f"{lab.api}/sbft/replicas/{name}/readmit", None
    else:
        url, run = (f"http://10.254.0.254:{lab.wsapi_port}/sbft/replicas/{name}/readmit",
                    lab.host(host).cmd)
    command = f"curl -s -m 5 -D - -X POST {auth}{url}"
    out = run(command) if run else os.popen(command).read()
    head, _, body = out.replace("\r", "").partition("\n\n")
    status = int(head.split()[1]) if head.startswith("HTTP/") else 0
    return status, head, json.loads(body) if body.strip() else {}


def test_operator_actions_need_the_token_or_loopback(lab_factory, tmp_path):
    token = "t0k3n-" + os.urandom(12).hex()
    path = tmp_path / "api.token"
    path.write_text(token + "\n")
    lab = lab_factory(sbft_extra=f"heartbeat_timeout = 0\napi_token_file = {path}\n")
    assert lab.health()["security"]["operator_actions"] == "bearer token"
    for name, given in (("lb2", None), ("lb2", "wrong-token-123456"), ("nobody", None)):
        status, head, body = _readmit(lab, name, given)
        assert status == 401 and body["error"]["code"] == 401, (name, given, head)
        assert "www-authenticate: bearer" in head.lower()  # (header names: any case)
        assert token not in head + json.dumps(body)
    assert _readmit(lab, "nobody", token)[0] == 404
    assert _readmit(lab, "lb2", token)[0] == 409  # (not byzantine: the token let it through)
    assert token not in lab.controller_log()

    lab.stop()
    lab = lab_factory(sbft_extra="heartbeat_timeout = 0\n")
    assert lab.health()["security"]["operator_actions"] == "loopback only"
    status, _, body = _readmit(lab, "lb2", host="lb1")  # from the management network
    assert status == 403 and "loopback only" in body["error"]["message"]
    assert _readmit(lab, "lb2")[0] == 409  # from loopback
