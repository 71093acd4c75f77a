"""Pure views: cluster state and switches → the dicts the REST API returns.

The field names here are the API: ``status``, ``primary``, ``epoch``, ``switches`` and, per
replica, ``name ip mac port state role`` are fixed; the rest are additions documented in the
README. Nothing here mutates state.
"""

from ryu.lib import dpid as dpid_lib

_ROUND = 3


def _age(value):
    return None if value is None else round(value, _ROUND)


def replica_view(config, cluster, name, now):
    replica = config.replica(name)
    health = cluster.health[name]
    return {
        "name": replica.name,
        "ip": replica.ip,
        "mac": replica.mac,
        "port": replica.port,
        "state": cluster.state(name),
        "role": cluster.role(name),
        "link_up": health.link_up,
        "down_reason": health.down_reason,
        "last_heartbeat_age_s": _age(cluster.heartbeat_age(name, now)),
        "service_ok": health.service_ok,
        "epoch": health.acked_epoch,
        "heartbeats": health.heartbeats,
        "agent_restarts": health.agent_restarts,
        "counters": dict(health.counters),
    }


def replicas_view(config, cluster, now):
    return [replica_view(config, cluster, replica.name, now) for replica in config.replicas]


def switches_view(switches):
    """``switches`` maps int dpid → (connected, OpenFlow version string or None)."""
    return [{"dpid": dpid_lib.dpid_to_str(dpid), "connected": connected, "ofp_version": version}
            for dpid, (connected, version) in sorted(switches.items())]


def health_view(config, cluster, switches, now):
    view = cluster.view
    return {
        "status": cluster.status(),
        "primary": view.primary,
        "epoch": view.epoch,
        "mode": config.mode,
        "vip": config.vip,
        "service_port": config.service_port,
        "members": list(view.members),
        "heartbeat_timeout_s": config.heartbeat_timeout,
        "switches": switches_view(switches),
        "replicas": replicas_view(config, cluster, now),
    }


def events_view(cluster, now):
    return {"events": [{"age_s": _age(now - event.at), "replica": event.replica,
                        "change": event.change, "epoch": event.epoch}
                       for event in reversed(cluster.history)]}


def heartbeat_reply(config, cluster, name):
    reply = {
        "role": cluster.role(name),
        "epoch": cluster.view.epoch,
        "primary": cluster.view.primary,
        "state": cluster.state(name),
        "heartbeat_interval_s": config.heartbeat_interval,
        "mode": config.mode,
        "vip": config.vip,
        "service_port": config.service_port,
    }
    if config.mode == "active":  # what every replica needs to share one sequence space
        reply["active"] = {"secret": config.active_secret.hex(),
                           "wscale": config.active_wscale}
    return reply


def error_body(code, message):
    return {"error": {"code": code, "message": message}}
