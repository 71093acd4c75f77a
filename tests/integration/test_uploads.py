"""Uploads through the active tier across a failover (issue 10). Three replicas with skewed
stacks (as test_active.py); the backends' upload sink answers each body's sha256 and length.

Each upload is 4 x tcp_rmem max, sent as fast as the client can. lb2, the backup today's
succession order would pick, is slowed with a token bucket on its ingress (what does not fit is
dropped before its agent, so it loses client bytes the primary acknowledges, for good). At a
third of the body the primary is SIGKILLed or its link cut. At the fault the test records the
client's acknowledged bytes (``ss -ti`` in the client) and each survivor's received bytes (its
proxy's socket, sampled for a second after the fault: bytes the client was acknowledged are
never resent, so a survivor reaches that count only if it had them), then asserts: the upload
completes with the right digest exactly when a survivor had every acknowledged byte, otherwise
the client is reset within RESET_BOUND_S of the promotion; never a hang (the client gives up
after STALL_S without progress and reports it). Every complete body a backend got matches
what the client sent; incomplete ones (a replica's proxy that lost the client or died) are
counted per replica and allowed.
"""

import collections
import json
import os
import time

import pytest

from sbft_lab import lab as lab_module

ACTIVE = "mode = active\n"
RMEM_MAX = int(open("/proc/sys/net/ipv4/tcp_rmem").read().split()[2])
SIZE = 4 * RMEM_MAX  # 64 MiB here
# The issue asks for a reset within 1 s of the promotion: the agent resets at once when its
# stack stalled short of the acknowledged point, else after client_input.CATCH_UP_S (0.5 s),
# checked every 0.2 s. 1.5 s leaves room for a loaded 2-core machine and still fails a reset
# that waits for the client's retransmission timeout or the proxy's 30 s timeout.
RESET_BOUND_S = 1.5
STALL_S = 10.0  # no progress for this long: the client reports a hang
CLIENT = lab_module.topo.plan()["clients"][0]["ip"]


@pytest.fixture
def upload_lab(lab_factory):
    def start():
        lab = lab_factory(agents=True, skew=True, sbft_extra=ACTIVE)
        assert lab.health()["primary"] == "lb1", "the configured order decides at start"
        return lab
    return start


def _client_acked(lab):
    sockets = [s for s in lab.tcp_bytes("c1") if s["peer"] == f"{lab_module.VIP}:5555"]
    return max((s["bytes_acked"] for s in sockets), default=0)


def _received(lab, name):
    try:
        sockets = lab.tcp_bytes(name)
    except Exception:  # (a host whose shell is busy: nothing to read now)
        return 0
    return max((s["bytes_received"] for s in sockets
                if (s["peer"] or "").startswith(CLIENT + ":")), default=0)


def _inject(lab, fault):
    if fault == "crash":
        lab.crash("lb1")
    else:
        lab.set_link("lb1", False)


def _promoted_at(lab, primary):
    """When the controller made ``primary`` primary (CLOCK_MONOTONIC, as the client's)."""
    asked = time.monotonic()
    events = lab_module.http_json(lab.api + "/sbft/events")["events"]
    ages = [e["age_s"] for e in events if e["replica"] == primary and e["change"] == "primary"]
    return asked - min(ages)


def upload_across_fault(lab, topo_module, fault, tag, count=1, size=SIZE, chunked=False,
                        fault_at=None):
    """Run one upload (``count`` pipelined bodies), inject ``fault`` once ``fault_at`` bytes
    (default: a third) were acknowledged; what happened, for :func:`judge`."""
    total = count * size
    proc, out, mark = lab.upload("c1", f"{tag}.json", tag, size, count=count, chunked=chunked,
                                 mark_at=fault_at or total // 3, stall=STALL_S, timeout=150)
    topo_module.wait_until(lambda: os.path.exists(mark) or proc.poll() is not None, 90, 0.005,
                           "the fault's point of the upload")
    assert proc.poll() is None, "the upload ended before the fault"
    _inject(lab, fault)
    fault_at = time.monotonic()
    acked = _client_acked(lab)
    survivors = ("lb2", "lb3")
    received = dict.fromkeys(survivors, 0)
    while time.monotonic() - fault_at < 1.0 and proc.poll() is None:
        for name in survivors:
            received[name] = max(received[name], _received(lab, name))
    primary = topo_module.wait_until(
        lambda: lab.health()["primary"] not in ("lb1", None) and lab.health()["primary"], 5,
        0.02, "failover")
    proc.wait(timeout=STALL_S + 150)
    with open(out, encoding="utf-8") as handle:
        result = json.load(handle)
    return {"result": result, "acked": acked, "received": received, "primary": primary,
            "promoted_at": _promoted_at(lab, primary), "fault_at": fault_at}


def judge(run):
    """The issue's rule: complete and right exactly when a survivor had every acknowledged
    byte, else reset within RESET_BOUND_S of the promotion; never a hang."""
    result = run["result"]
    outcome = result["outcome"]
    assert outcome in ("ok", "reset"), (outcome, result.get("error"), run["acked"],
                                        run["received"])
    assert run["acked"] > 0
    had_all = any(got >= run["acked"] for got in run["received"].values())
    responses, expected = result["responses"], result["expected"]
    # whatever arrived is right and in order (pipelined: responses before a reset too)
    assert [r["sha256"] for r in responses] == [e["sha256"] for e in expected[:len(responses)]]
    assert all(r["status"] == 200 for r in responses)
    if had_all:
        assert outcome == "ok", (run["acked"], run["received"], result.get("error"))
        assert len(responses) == len(expected)
    else:
        assert outcome == "reset", (run["acked"], run["received"])
        after = result["reset_at"] - run["promoted_at"]
        assert after <= RESET_BOUND_S, f"reset {after:.3f} s after the promotion"
    return had_all


def check_bodies(lab, run):
    """Every complete body a backend got is the one the client sent; incomplete bodies are
    counted per replica (allowed)."""
    expected = {f"/upload/{tag}-{i}": e["sha256"]
                for tag, items in run["tags"].items() for i, e in enumerate(items)}
    incomplete = collections.Counter()
    records = lab.body_log()
    for record in records:
        assert record["path"] in expected, record
        if record["complete"]:
            assert record["sha256"] == expected[record["path"]], record
        else:
            incomplete[record["peer"]] += 1
    print(f"bodies: {len(records)} logged, incomplete per replica: {dict(incomplete)}")
    return incomplete


def _counters(lab, name):
    return next(r for r in lab.health()["replicas"] if r["name"] == name)["counters"]


@pytest.mark.parametrize("fault", ["crash", "link"])
@pytest.mark.parametrize("run_number", [1, 2])
def test_an_upload_survives_the_primary_when_a_backup_has_every_byte(upload_lab, topo_module,
                                                                    fault, run_number):
    lab = upload_lab()
    lab.shape("lb2")
    run = upload_across_fault(lab, topo_module, fault, f"{fault}{run_number}")
    # lb2 lost client bytes to its token bucket and says so; succession passes over it
    counters = _counters(lab, "lb2")
    assert counters["client_gap_bytes"] > 0 and counters["bytes_missing"] > 1 << 20, counters
    assert lab.tc_drops("lb2") > 0
    assert run["primary"] == "lb3", run["received"]
    assert judge(run), "lb3, level with the primary, had every acknowledged byte"
    run["tags"] = {f"{fault}{run_number}": run["result"]["expected"]}
    check_bodies(lab, run)


@pytest.mark.parametrize("fault", ["crash", "link"])
def test_with_both_backups_slowed_the_upload_is_reset_at_once(upload_lab, topo_module, fault):
    lab = upload_lab()
    lab.shape("lb2")
    lab.shape("lb3")
    run = upload_across_fault(lab, topo_module, fault, f"both-{fault}")
    assert not judge(run), "no survivor had every acknowledged byte: the premise"
    assert run["result"]["outcome"] == "reset"
    assert _counters(lab, run["primary"])["input_lost_resets"] >= 1
    run["tags"] = {f"both-{fault}": run["result"]["expected"]}
    check_bodies(lab, run)


def test_pipelined_posts_on_one_connection_across_a_crash(upload_lab, topo_module):
    """Five chunked POSTs of tcp_rmem max each, pipelined on one keep-alive connection (more
    than 4 x tcp_rmem max in all), lb2 slowed; the crash lands once the client was
    acknowledged the third body, i.e. between that body and its response: every response
    arrives right and in order, or the connection is reset at once."""
    lab = upload_lab()
    lab.shape("lb2")
    size = RMEM_MAX
    run = upload_across_fault(lab, topo_module, "crash", "pipe", count=5, size=size,
                              chunked=True, fault_at=3 * size)
    judge(run)
    run["tags"] = {"pipe": run["result"]["expected"]}
    check_bodies(lab, run)
