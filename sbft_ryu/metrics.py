"""Prometheus metrics, all declared here and derived at scrape time from the health view.

Deriving from the same dict that ``/sbft/health`` returns keeps the two from disagreeing and
leaves no call site that updates a metric by name. The registry is passed in, so tests use a
fresh one.
"""

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sbft_ryu.cluster import BACKUP, BYZANTINE, NO_ROLE, PRIMARY, UP

STATUSES = ("ok", "degraded", "down")
ROLES = (PRIMARY, BACKUP, NO_ROLE)


class SbftCollector:
    """``source()`` returns ``(health_view_dict, controller_counters_dict)``."""

    def __init__(self, source):
        self._source = source

    def describe(self):
        return []  # metrics vary with the configuration; no registration-time checks

    def collect(self):
        health, counters = self._source()
        yield _gauge("sbft_epoch", "Primary epoch: increases at every change of primary",
                     [((), health["epoch"])])
        yield _gauge("sbft_status", "1 for the tier's current status (ok, degraded, down)",
                     [((status,), int(health["status"] == status)) for status in STATUSES],
                     ["status"])
        yield _gauge("sbft_switch_connected", "1 while the switch is connected",
                     [((s["dpid"],), int(s["connected"])) for s in health["switches"]],
                     ["dpid"])
        replicas = health["replicas"]
        yield _gauge("sbft_replica_up", "1 while the replica is up (link, heartbeat, probe)",
                     [((r["name"],), int(r["state"] == UP)) for r in replicas], ["replica"])
        yield _gauge("sbft_replica_role", "1 for the replica's current role",
                     [((r["name"], role), int(r["role"] == role))
                      for r in replicas for role in ROLES], ["replica", "role"])
        yield _gauge("sbft_replica_link_up", "1 while the replica's switch port is up",
                     [((r["name"],), int(r["link_up"])) for r in replicas], ["replica"])
        yield _gauge("sbft_replica_service_ok", "1 if the agent's last probe of its proxy passed",
                     [((r["name"],), int(bool(r["service_ok"]))) for r in replicas], ["replica"])
        yield _gauge("sbft_replica_heartbeat_age_seconds", "Seconds since the last heartbeat",
                     [((r["name"],), r["last_heartbeat_age_s"]) for r in replicas
                      if r["last_heartbeat_age_s"] is not None], ["replica"])
        yield _gauge("sbft_replica_spare", "1 while the replica is a spare (outside the voting "
                     "set, no role)", [((r["name"],), int(r["spare"])) for r in replicas],
                     ["replica"])
        yield _gauge("sbft_replica_generation", "Entries of the replica into the members "
                     "(start, return, readmission, promotion)",
                     [((r["name"],), r["generation"]) for r in replicas], ["replica"])
        yield _counter("sbft_replica_promotions", "Promotions of the replica from spare into "
                       "the voting set", [((r["name"],), r["promotions"]) for r in replicas],
                       ["replica"])
        yield _counter("sbft_replica_heartbeats", "Heartbeats received",
                       [((r["name"],), r["heartbeats"]) for r in replicas], ["replica"])
        yield _counter("sbft_agent_counter", "Counters an agent reports in its heartbeats",
                       [((r["name"], key), value) for r in replicas
                        for key, value in sorted(r["counters"].items())
                        if key not in AGENT_GAUGES],
                       ["replica", "counter"])
        yield _gauge("sbft_agent_client_input", "Active mode: the client's bytes an agent's "
                     "stack lacks though the client was acknowledged them (connections "
                     "behind, bytes missing) and the client bytes it keeps for its stack",
                     [((r["name"], key), r["counters"][key]) for r in replicas
                      for key in AGENT_GAUGES if key in r["counters"]],
                     ["replica", "measure"])
        yield from _voting(health)
        yield _counter("sbft_controller", "Controller event counters",
                       [((key,), value) for key, value in sorted(counters.items())], ["event"])


# point-in-time values among an agent's counters (sbft_ryu.agent.active.GAUGE_NAMES)
AGENT_GAUGES = ("connections_behind", "bytes_missing", "parked_bytes")

VOTE_COUNTERS = (
    ("segments_compared", "Reply ranges the replica's agent compared (claims plus votes)"),
    ("divergences", "Ranges where the replica's output disagreed with the majority"),
    ("wire_divergences", "Primary epochs in which f + 1 backups saw its wire bytes differ"),
    ("reports_verified", "Evidence items from the replica that verified"),
    ("reports_rejected", "Evidence items from the replica that did not verify"),
    ("unauthenticated_heartbeats", "Heartbeats in the replica's name that failed authentication"),
)


def _voting(health):
    voting, replicas = health["voting"], health["replicas"]
    yield _gauge("sbft_replies_voted", "1 while replies are voted (voting on, f + 1 members up)",
                 [((), int(voting["voted"]))])
    yield _gauge("sbft_replica_byzantine", "1 while the replica is marked byzantine",
                 [((r["name"],), int(r["state"] == BYZANTINE)) for r in replicas], ["replica"])
    for key, doc in VOTE_COUNTERS:
        yield _counter(f"sbft_replica_{key}", doc,
                       [((r["name"],), r["votes"][key]) for r in replicas], ["replica"])
    yield _gauge("sbft_replica_suspicion", "Decaying count of the replica's divergences",
                 [((r["name"],), r["votes"]["suspicion"]) for r in replicas], ["replica"])
    yield _gauge("sbft_replica_divergence_rate",
                 "Suspicion over the ranges the replica took part in lately",
                 [((r["name"],), r["votes"]["divergence_rate"]) for r in replicas], ["replica"])


def _gauge(name, doc, samples, labels=()):
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for label_values, value in samples:
        family.add_metric(list(label_values), value)
    return family


def _counter(name, doc, samples, labels=()):
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for label_values, value in samples:
        family.add_metric(list(label_values), value)
    return family


def make_registry(source):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SbftCollector(source))
    return registry


def exposition(registry):
    """(body bytes, content type) in the Prometheus text format."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
