"""Pure views: cluster state and switches → the dicts the REST API returns.

The field names here are the API: ``status``, ``primary``, ``epoch``, ``switches`` and, per
replica, ``name ip mac port state role`` are fixed; the rest are additions documented in the
README. Nothing here mutates state.
"""

from ryu.lib import dpid as dpid_lib

from sbft_ryu.config import ACTIVE
from sbft_ryu.core import members_needed

_ROUND = 3


def _age(value):
    return None if value is None else round(value, _ROUND)


def votes_view(name, health, referee, now):
    """Per-replica vote statistics: the controller's verdicts and the agent's own counts."""
    judge = referee.judge if referee is not None else None
    counters = health.counters
    stats = judge.stats[name] if judge else None
    return {
        "segments_compared": int(counters.get("claims", 0) + counters.get("votes_cast", 0)),
        "divergences": stats.divergences if stats else 0,
        "wire_divergences": stats.wire_divergences if stats else 0,
        "suspicion": round(judge.suspicion(name, now), 3) if judge else 0.0,
        "compared_recently": round(judge.compared_mass(name, now), 1) if judge else 0.0,
        "divergence_rate": round(judge.divergence_rate(name, now), 4) if judge else 0.0,
        "reports_verified": stats.reported if stats else 0,
        "reports_rejected": stats.rejected if stats else 0,
        "unauthenticated_heartbeats": referee.auth_failures[name] if referee else 0,
    }


def voting_view(config, cluster):
    """Whether replies are voted now and what the members up can still do (n, the configured
    members, and f stay fixed; the numbers needed come from core.members_needed)."""
    if not config.voting:
        return {"enabled": False, "voted": False, "f": config.f, "reason": "voting is off"}
    f, n, up = config.f, len(config.replicas), len(cluster.view.members)
    needed, convict_from, wire_from = members_needed(n, f)
    voted = up >= needed and cluster.view.primary is not None
    return {"enabled": True, "voted": voted, "f": f, "up": up, "needed": needed,
            "convicts": voted and up >= convict_from,
            "wire_checked": voted and up >= wire_from,
            "reason": _voting_reason(up, n, f, voted, cluster.view.primary is not None),
            "unvoted_policy": config.unvoted}


def _voting_reason(up, n, f, voted, serving):
    needed, convict_from, wire_from = members_needed(n, f)
    head = f"{up} of {n} replicas up, {needed} needed to vote"
    if not voted:
        return head + (": replies are NOT voted" if serving else ": service stopped")
    limits = []
    if up < convict_from:
        limits.append(f"a liar's bytes are withheld but it cannot be convicted (that needs "
                      f"{n - f} replicas agreeing against it: {convict_from} up)")
    if up < wire_from:
        limits.append(f"the wire check needs {f + 1} backup reporters ({wire_from} up), so a "
                      f"host bypassing its agent is not detected")
    if not limits:
        return head + ": replies are voted, liars are convicted and the wire is checked"
    return head + ": replies are voted; " + "; ".join(limits)


def replica_view(config, cluster, name, now, referee=None):
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
        "spare": cluster.is_spare(name),
        "generation": cluster.generation[name],
        "promotions": cluster.promoted[name],
        "heartbeats": health.heartbeats,
        "agent_restarts": health.agent_restarts,
        "counters": dict(health.counters),
        "votes": votes_view(name, health, referee, now),
        **authenticated_view(name, referee),
    }


def authenticated_view(name, referee):
    """Whether the controller can tell this replica's heartbeats from a forger's, and how: by
    its key ("key") or its pinned management address ("source")."""
    how = referee.how(name) if referee is not None else None
    return {"authenticated": how is not None, "authenticated_by": how}


def security_view(config, referee):
    """Who may change what: replicas nobody authenticates, how operator actions are checked,
    and the UDP heartbeat port (None: not served, as no replica has a key)."""
    unauthenticated = [r.name for r in config.nodes
                       if referee is None or referee.how(r.name) is None]
    return {"unauthenticated_replicas": unauthenticated,
            "operator_actions": "bearer token" if config.api_token else "loopback only",
            "heartbeat_port": (config.heartbeat_port or None) if config.replica_keys else None}


def replicas_view(config, cluster, now, referee=None):
    return [replica_view(config, cluster, replica.name, now, referee)
            for replica in config.nodes]


def switches_view(switches):
    """``switches`` maps int dpid → (connected, OpenFlow version string or None)."""
    return [{"dpid": dpid_lib.dpid_to_str(dpid), "connected": connected, "ofp_version": version}
            for dpid, (connected, version) in sorted(switches.items())]


STANDALONE_STATUS = ("standalone", None, 0, "coordination is empty: this controller alone")


def controller_view(config, status=STANDALONE_STATUS):
    """This controller's place among several: ``status`` is (role, leader URL or None, term,
    reason), from coordination.Coordinator.status (standalone without coordination)."""
    role, leader, term, reason = status
    return {"role": role, "leader": leader, "coordination": config.coordination_url,
            "term": term, "reason": reason}


def health_view(config, cluster, switches, now, referee=None, decided=True,
                controller=STANDALONE_STATUS):
    """``decided`` False: a restarted controller still holds the view it restored (or has
    not written the current one yet); agents are told to keep their roles. ``controller``:
    see controller_view."""
    view = cluster.view
    return {
        "status": cluster.status(),
        "decided": decided,
        "primary": view.primary,
        "epoch": view.epoch,
        "mode": config.mode,
        "vip": config.vip,
        "service_port": config.service_port,
        "members": list(view.members),
        "spares": cluster.spare_names(),
        "promotions": promotions_view(cluster, now),
        "heartbeat_timeout_s": config.heartbeat_timeout,
        "security": security_view(config, referee),
        "voting": voting_view(config, cluster),
        "switches": switches_view(switches),
        "replicas": replicas_view(config, cluster, now, referee),
        "controller": controller_view(config, controller),
    }


def promotions_view(cluster, now):
    """Every promotion of a spare into the voting set (the last ones kept), newest first."""
    return [{"age_s": _age(now - p.at), "replica": p.replica, "replacing": p.replacing,
             "reason": p.reason, "epoch": p.epoch} for p in reversed(cluster.promotions)]


def events_view(cluster, now):
    return {"events": [{"age_s": _age(now - event.at), "replica": event.replica,
                        "change": event.change, "epoch": event.epoch}
                       for event in reversed(cluster.history)]}


def heartbeat_reply(config, cluster, name, nonce=None, addresses=None, reset=(), secret=None,
                    heartbeat_port=None, decided=True, controller=STANDALONE_STATUS):
    """The answer to a heartbeat: role, epoch, the parameters agents need; with a key, the
    nonce the next heartbeat must sign; with voting, the peers and connections to reset.
    ``secret``: what it carries of the active-mode secret (Referee.secret_field: sealed,
    clear, or nothing); ``heartbeat_port``: the UDP port a keyed agent may use instead.
    ``decided`` False (a restarted controller before its decision, or a view not yet on
    disk): agents keep the role they have. ``controller`` (see controller_view): agents obey
    only a "leader" or "standalone" answer, the highest term first."""
    reply = {
        "decided": decided,
        "role": cluster.role(name),
        "epoch": cluster.view.epoch,
        "primary": cluster.view.primary,
        "state": cluster.state(name),
        "heartbeat_interval_s": config.heartbeat_interval,
        "mode": config.mode,
        "vip": config.vip,
        "service_port": config.service_port,
        "controller": {"role": controller[0], "term": controller[2]},
    }
    if config.mode == ACTIVE:  # what every replica needs to share one sequence space
        reply["active"] = {**(secret or {}), "wscale": config.active_wscale,
                           "voting": config.voting}
    if nonce is not None:
        reply["nonce"] = nonce
    if heartbeat_port:
        reply["heartbeat_port"] = heartbeat_port
    if config.voting:
        voting = voting_view(config, cluster)
        peers = {peer: address for peer, address in sorted((addresses or {}).items())
                 if peer in cluster.view.members}
        reply["voting"] = {
            "required": voting["voted"], "f": config.f, "hold_s": config.vote_hold,
            "port": config.vote_port, "unvoted": config.unvoted,
            "generation": cluster.generation[name],  # bumped at every entry into the members
            "peers": peers,  # the up voting members only
            "generations": {peer: cluster.generation[peer] for peer in peers},
            "reset": list(reset),
        }
    return reply


def error_body(code, message):
    return {"error": {"code": code, "message": message}}
