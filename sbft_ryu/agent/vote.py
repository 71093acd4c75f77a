"""The agent's side of output voting (active mode): hold, claim, vote, compare the wire.

Runs in the packet thread, beside the translator, so it needs no locks; the heartbeat thread
only reads ``reports`` (a deque) and replaces the configuration, a frozen :class:`VoteConfig`,
whole with :meth:`configure` (one assignment: the packet thread never sees half of one).

* As **primary** it holds every reply segment that carries data or a FIN, claims its digest
  to the backups (batched, signed) and releases it once ``f`` backups voted the same digest;
  a segment without enough votes after ``hold_s`` is dropped (TCP resends it) and counted.
* As **backup** it answers each claim of the current primary with a vote about its own output
  for the same range, as soon as its own stack has produced those bytes, and compares the
  primary's packets that the switch copies to it (the wire check).
* A backup that cannot vote on a claim **abstains**, explicitly (a signed abstention to the
  primary), and says whether for the whole connection or for that range only:

  - the whole connection: one that began before its current generation (it entered the
    voting set anew after the connection began, so what its stack did there is not evidence
    of the replica it is now); one where its own output cannot answer any more (own_range's
    ABSTAIN); one where the client holds bytes this backup did not find equal to its own (a
    wire copy differed, or the client acknowledged bytes it never checked: *unsure*);
  - that range only: the client acknowledged it, and the bytes up to its end were checked
    equal to this backup's own (a vote or a wire copy; what is tracked is the highest end
    found equal, so a wire copy lost below it goes unnoticed). If the client acknowledged the
    whole range, resending it is harmless (the client discards it) and the abstention counts
    towards the ``f`` statements that release it; if only its start, the primary's stack
    resends from the client's acknowledgement, so the held segment is just dropped once too
    few statements are still possible on it.

  A primary counts the voters still possible on a connection (its peers, the up members, that
  have not abstained on all of it in answer to a claim of this primary); below ``f`` the
  connection can never be voted: it is reset instead of hanging (served unvoted only under
  ``unvoted = serve`` while the tier is not voting anyway: see
  :meth:`VoteEngine._serves_unvoted`).
* As primary, a connection that began before its own current generation, or that it was
  unsure of as a backup, is reset rather than continued (its first reply segment there is
  dropped and the client gets a RST): continuing would splice its bytes onto other ones.
* What the engine learnt of a connection is kept per (client, port); a client's SYN with a
  new ISN there (the client port came round again) makes it forget it (:meth:`forget`).
* Disagreements become evidence for the controller: the signed batches that show them, sent
  with the next heartbeat. A divergent range is reported once every expected vote is in (so
  the controller sees a majority) or when it expires.
"""

from collections import deque
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping, Optional

from sbft_ryu import protocol
from sbft_ryu.agent.own_output import ABSTAIN, ACKNOWLEDGED, PARTLY_ACKNOWLEDGED
from sbft_ryu.agent.packet import serial_gt

REPORT_LIMIT = 256  # reports waiting for a heartbeat; beyond, the oldest go
RECENT_S = 2.0  # how long a released range keeps collecting late votes (for evidence)
RECENT_MAX = 4096
# A primary outvoted on a connection (every backup agrees on other bytes) can never release
# it; if it is still primary this long after (an honest minority, e.g. a Date header, rather
# than a liar the controller excludes sooner), it resets the connection so that the client
# fails at once instead of waiting for its own timeout.
OUTVOTED_RESET_S = 1.0
# A backup votes with what it has on a claim it cannot match only after its own stack has
# been quiet on the connection this long: a backup whose backend answers later than the
# primary's must not look like a dissenter (the common case under load), while a primary
# that claims bytes nobody else produces is still outvoted.
PARTIAL_QUIET_S = 1.0
# How long a primary remembers who abstained on a connection (refreshed by every abstention,
# and a backup abstains on every claim of it), and at most on how many connections.
ABSTAINED_S = 30.0
ABSTAINED_MAX = 4096

COUNTER_NAMES = ("claims", "votes_cast", "released_voted", "released_unvoted", "vote_timeouts",
                 "divergent_votes", "wire_checked", "wire_divergent", "claims_unanswerable",
                 "partial_votes", "abstentions", "outvoted", "outvoted_resets",
                 "batches_rejected", "abstentions_received", "unvotable_resets",
                 "stale_generation_resets", "range_abstentions", "released_delivered",
                 "range_drops", "unsure_connections", "unsure_resets",
                 "abstentions_unclaimed", "connections_forgotten")


@dataclass(frozen=True)
class VoteConfig:
    """The controller's voting configuration (from its heartbeat answer), with its defaults."""

    required: bool = False
    f: int = 1
    hold_s: float = 0.2
    port: int = protocol.VOTE_PORT
    peers: Mapping = field(default_factory=lambda: MappingProxyType({}))  # name -> address
    primary: Optional[str] = None
    epoch: int = 0
    generation: int = 0  # this replica's, signed into its batches (0: not a member yet)
    unvoted: str = "serve"  # too few possible voters on a connection: serve it unvoted, or stop

    @classmethod
    def of(cls, required=False, f=1, hold_s=0.2, port=protocol.VOTE_PORT, peers=None,
           primary=None, epoch=0, generation=0, unvoted="serve"):
        """From the answer's JSON values (ValueError/TypeError on values of the wrong type)."""
        generation = int(generation or 0)
        if not 0 <= generation <= 0xFFFFFFFF:
            raise ValueError("generation out of range")
        return cls(bool(required), max(1, int(f)), float(hold_s), int(port),
                   MappingProxyType(dict(peers or {})), primary, epoch or 0, generation,
                   "stop" if unvoted == "stop" else "serve")


class Claim:
    __slots__ = ("token", "payload", "digest", "at", "votes", "raw", "released", "delivered",
                 "unable")

    def __init__(self, token, payload, digest, at):
        self.token = token
        self.payload = payload
        self.digest = digest
        self.at = at
        self.votes = {}  # backup -> (digest, raw batch)
        self.raw = None  # the signed claim batch that carried it
        self.released = False
        self.delivered = set()  # backups that say the client acknowledged the whole range
        self.unable = set()  # backups that cannot vote on this range (partly acknowledged)


class VoteEngine:
    def __init__(self, name, key, own_output, send):
        self.name = name
        self.key = key
        self.own_output = own_output  # what our own stack sent (OwnOutput)
        self.send = send  # (datagram, (ip, port)) -> None
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        self.reports = deque(maxlen=REPORT_LIMIT)  # ("evidence", [raw...]) / ("wire", tuple)
        self.config = VoteConfig()
        self.pending = {}  # range key -> Claim (held by the primary)
        self.recent = {}  # range key -> Claim (released, still collecting votes)
        self.claims_out = []
        self.votes_out = []
        self.waiting = {}  # (client, port) -> [(statement, claim raw or None, at, epoch)]
        self.outvoted = {}  # (client, port) -> when the backups first agreed against us
        self.resets = []  # (client, port) the packet thread resets (outvoted, unvotable, old)
        self.abstains_out = []
        self.abstained = {}  # (client, port) -> [peers that abstained there, last at]
        self.unvotable = {}  # (client, port) -> when it was found unvotable (served or reset)
        self.dropped = []  # tokens of held segments to drop at the next expire
        # as backup: (client, port) -> [shared-space end up to which bytes the client got
        # were checked equal to ours, last at]; and the connections we are unsure of
        self.verified = {}
        self.unsure = {}  # (client, port) -> when

    def configure(self, config):
        """A new :class:`VoteConfig` (heartbeat thread): swapped in whole, without this
        replica among the peers."""
        peers = MappingProxyType({n: a for n, a in config.peers.items() if n != self.name})
        self.config = replace(config, peers=peers)

    # ---- primary ----------------------------------------------------------------------------

    def hold(self, token, payload, segment, now):
        """A translated reply segment of the primary: (held for votes, tokens to drop). A
        segment not held goes out now; a re-sent one replaces the copy held before."""
        conn = (segment.client, segment.port)
        if conn in self.unvotable or conn in self.unsure or self._predates(conn):
            return self._hold_unvotable(token, conn, now)
        if not self.config.required:
            self.counters["released_unvoted"] += 1
            return False, ()
        key = segment.range_key
        if key in self.recent and self.recent[key].digest == segment.digest:
            return False, ()  # a retransmission of a range the backups already agreed on
        claim = self.pending.get(key)
        if claim is not None:  # the stack re-sent it before the votes came: keep the newest
            replaced = claim.token
            claim.token, claim.payload = token, payload
            return True, (replaced,)
        self.pending[key] = Claim(token, payload, segment.digest, now)
        self.claims_out.append(segment)
        self.counters["claims"] += 1
        return True, ()

    def _hold_unvotable(self, token, conn, now):
        """A segment of a connection that cannot be voted on: one that began before this
        replica's generation or that it was unsure of as a backup (reset), or that too few
        possible voters are left on (reset, or sent unvoted under ``unvoted = serve``)."""
        if conn not in self.unvotable:  # it began before our generation, or we are unsure
            self._mark_unvotable(conn, now)
            self.resets.append(conn)
            self.counters["unsure_resets" if conn in self.unsure
                          else "stale_generation_resets"] += 1
            return True, (token,)
        if self._serves_unvoted() and not self._predates(conn):
            self.counters["released_unvoted"] += 1
            return False, ()
        return True, (token,)  # being reset

    def _serves_unvoted(self):
        """Whether a connection too few voters are left on goes out unvoted: only under
        ``unvoted = serve`` while the tier is not voting anyway. While replies are voted it is
        reset: backups abstain where the client already acknowledged bytes they never voted
        on (e.g. sent past the vote by a host bypassing its agent), and continuing such a
        connection would splice honest bytes onto unchecked ones."""
        return self.config.unvoted == "serve" and not self.config.required

    def _mark_unvotable(self, conn, now):
        _mark(self.unvotable, conn, now)

    def _predates(self, conn):
        """Whether the connection began before this replica's current generation."""
        began = self.own_output.began_in(*conn)
        return began is not None and began < self.config.generation

    def forget(self, conn):
        """A new connection began on this client port (a SYN with another ISN): what was
        learnt of the earlier one there (unsure, unvotable, abstained on, checked equal up to
        a point, outvoted, claims waiting for our stack) is not about this one. Client ports
        come round again within seconds under a steady load of short connections."""
        found = False
        for table in (self.unsure, self.unvotable, self.abstained, self.verified,
                      self.outvoted, self.waiting):
            found = table.pop(conn, None) is not None or found
        if conn in self.resets:
            self.resets = [c for c in self.resets if c != conn]
            found = True
        if found:
            self.counters["connections_forgotten"] += 1

    def possible_voters(self, conn):
        """The peers (up members) that may still vote on a connection: not abstained there."""
        entry = self.abstained.get(conn)
        return [peer for peer in self.config.peers if entry is None or peer not in entry[0]]

    def on_abstain(self, batch, now):
        """A backup's abstentions: (token, payload) pairs that may now go out (a range the
        client already has, or unvoted on a connection too few possible voters are left on,
        see :meth:`_serves_unvoted`)."""
        released = []
        for statement in batch.statements:
            conn = (statement.client, statement.port)
            self.counters["abstentions_received"] += 1
            if statement.digest in (protocol.ABSTAIN_DELIVERED, protocol.ABSTAIN_RANGE):
                released.extend(self._abstain_on_range(batch.author, statement))
                continue
            key = statement.range_key
            if key not in self.pending and key not in self.recent:
                # it answers no claim of ours: one of the primary before us (answered late,
                # after a failover), or of an earlier connection on the same client port.
                # Every claim of ours gets its own answer.
                self.counters["abstentions_unclaimed"] += 1
                continue
            entry = self.abstained.get(conn)
            if entry is None:
                if len(self.abstained) >= ABSTAINED_MAX:
                    del self.abstained[next(iter(self.abstained))]
                entry = self.abstained[conn] = [set(), now]
            entry[0].add(batch.author)
            entry[1] = now
            if conn not in self.unvotable and \
                    len(self.possible_voters(conn)) < self.config.f:
                released.extend(self._give_up(conn, now))
        return released

    def _abstain_on_range(self, author, statement):
        """A backup abstains on one range: release it if the statements for it now reach
        ``f`` (the client already has the whole range, so resending it is harmless); drop it
        at once if they never can (the stack resends from the client's acknowledgement)."""
        self.counters["range_abstentions"] += 1
        claim = self.pending.get(statement.range_key)
        if claim is None:
            return ()
        if statement.digest == protocol.ABSTAIN_DELIVERED:
            claim.delivered.add(author)
        else:
            claim.unable.add(author)
        if self._statements_for(claim) >= self.config.f:
            self.counters["released_delivered"] += 1
            return (self._release(statement.range_key, claim),)
        answered = set(claim.votes) | claim.delivered | claim.unable
        still = [p for p in self.possible_voters((statement.client, statement.port))
                 if p not in answered]
        if self._statements_for(claim) + len(still) < self.config.f:
            del self.pending[statement.range_key]
            self.dropped.append(claim.token)
            self.counters["range_drops"] += 1
        return ()

    def _statements_for(self, claim):
        """Backups whose statement on a claim lets it out: a vote for the same digest, or
        "the client acknowledged the whole range" (then the bytes it gets are a duplicate)."""
        return sum(1 for d, _ in claim.votes.values() if d == claim.digest) + \
            len(claim.delivered - set(claim.votes))

    def _release(self, key, claim):
        """(token, payload) of a held claim that may go out now; it keeps collecting votes."""
        claim.released = True
        out = (claim.token, claim.payload)
        del self.pending[key]
        self._remember(key, claim)
        return out

    def _give_up(self, conn, now):
        """A connection that can never get ``f`` votes: drop its held segments and reset it
        (or release them unvoted, see :meth:`_serves_unvoted`)."""
        self._mark_unvotable(conn, now)
        keys = [key for key in self.pending if key[:2] == conn]
        claims = [self.pending.pop(key) for key in keys]
        if self._serves_unvoted():
            self.counters["released_unvoted"] += len(claims)
            return [(claim.token, claim.payload) for claim in claims]
        self.dropped.extend(claim.token for claim in claims)
        self.resets.append(conn)
        self.counters["unvotable_resets"] += 1
        return []

    def take_pending(self):
        """Tokens of every held segment (the handler is no longer current): the caller drops
        them."""
        tokens = [claim.token for claim in self.pending.values()]
        self.pending.clear()
        return tokens

    def on_votes(self, batch, now):
        """A backup's votes: (token, payload) pairs that may now go out."""
        released = []
        for statement in batch.statements:
            key = statement.range_key
            claim = self.pending.get(key) or self.recent.get(key)
            if claim is None:
                continue
            claim.votes[batch.author] = (statement.digest, batch.raw)
            if statement.digest != claim.digest:
                self.counters["divergent_votes"] += 1
                if not claim.released and self._outvoted(claim):
                    conn = (statement.client, statement.port)
                    if conn not in self.outvoted:
                        self.outvoted[conn] = now
                        self.counters["outvoted"] += 1
            elif not claim.released and self._statements_for(claim) >= self.config.f:
                released.append(self._release(key, claim))
                self.counters["released_voted"] += 1
            self._maybe_report(claim, final=False)
        return released

    def _outvoted(self, claim):
        """Whether n - f backups (all of them, at n = 3) agree on a digest other than ours."""
        counts = {}
        for value, _ in claim.votes.values():
            if value != claim.digest:
                counts[value] = counts.get(value, 0) + 1
        config = self.config
        return bool(counts) and max(counts.values()) >= len(config.peers) + 1 - config.f

    def _remember(self, key, claim):
        claim.token = claim.payload = None
        self.recent[key] = claim
        if len(self.recent) > RECENT_MAX:
            for old in list(self.recent)[:RECENT_MAX // 4]:
                self._maybe_report(self.recent.pop(old), final=True)

    def _maybe_report(self, claim, final):
        """Report a divergent range once every backup voted (or, ``final``, when it ends)."""
        if claim.raw is None or not any(d != claim.digest for d, _ in claim.votes.values()):
            return
        if not final and len(claim.votes) < len(self.config.peers):
            return
        raws = [claim.raw] + [raw for _, raw in claim.votes.values()]
        self.reports.append(("evidence", list(dict.fromkeys(raws))))
        claim.raw = None  # reported once

    # ---- backup -----------------------------------------------------------------------------

    def on_claims(self, batch, now):
        """The primary's claims: vote on each range this replica has produced, wait for the
        rest. Claims from anyone but the current primary are ignored."""
        config = self.config
        if batch.author != config.primary:
            return
        for statement in batch.statements:
            self._answer(statement, batch.raw, now, config.epoch)

    def on_wire(self, segment, now):
        """A copy of the primary's actual packet (from the switch): compare it with our own."""
        self.counters["wire_checked"] += 1
        self._answer(segment, None, now, self.config.epoch)

    def on_own_output(self, client_key, now):
        """Our stack sent more for this connection: answer what waited for it."""
        waiting = self.waiting.pop(client_key, None)
        for statement, raw, at, epoch in waiting or ():
            self._answer(statement, raw, at, epoch)

    def _answer(self, statement, claim_raw, at, epoch, partial=False):
        conn = (statement.client, statement.port)
        if self._predates(conn) or (claim_raw is not None and conn in self.unsure):
            # we entered the voting set after it began (not our evidence), or the client
            # holds bytes we did not find equal to ours (its wire copies we still compare:
            # every divergent range is evidence)
            own = protocol.ABSTAIN_CONNECTION
        else:
            own = self.own_output.own_range(statement.client, statement.port,
                                            statement.start, statement.end, partial)
            if own is ABSTAIN:
                own = protocol.ABSTAIN_CONNECTION
            elif own is ACKNOWLEDGED or own is PARTLY_ACKNOWLEDGED:
                own = self._acknowledged(conn, statement.end, own, at)
        if own is None:
            if partial:  # (own_range never answers a partial question with None; be sure)
                self.counters["claims_unanswerable"] += 1
                return
            self.waiting.setdefault((statement.client, statement.port), []).append(
                (statement, claim_raw, at, epoch))
            return
        if isinstance(own, bytes):  # an abstention, with its reason
            self.counters["abstentions"] += 1
            if claim_raw is not None:  # tell the primary (a wire copy needs no answer)
                self.abstains_out.append(protocol.Statement(
                    statement.client, statement.port, statement.start, statement.end, own))
            return
        mine = protocol.digest(*own)
        if mine == statement.digest:
            self._verified_to(conn, statement.end, at)
        if claim_raw is None:  # the wire check
            if mine != statement.digest:
                self._unsure(conn, at)
                self.counters["wire_divergent"] += 1
                self.reports.append(("wire", (statement.client, statement.port, epoch,
                                              statement.start, statement.end,
                                              self.config.generation)))
            return
        vote = protocol.Statement(statement.client, statement.port, statement.start,
                                statement.end, mine)
        self.votes_out.append((vote, claim_raw if mine != statement.digest else None))
        self.counters["votes_cast"] += 1
        if partial:
            self.counters["partial_votes"] += 1
        if mine != statement.digest:
            self.counters["divergent_votes"] += 1
        self._voted(statement, claim_raw)

    def _acknowledged(self, conn, end, own, at):
        """The abstention for a range the client acknowledged (all of it, or its start): for
        that range only if every byte of it was checked equal to ours, else for the whole
        connection (the client got bytes nobody here vouched for)."""
        entry = self.verified.get(conn)
        if entry is not None and not serial_gt(end, entry[0]):
            return protocol.ABSTAIN_DELIVERED if own is ACKNOWLEDGED else protocol.ABSTAIN_RANGE
        self._unsure(conn, at)
        return protocol.ABSTAIN_CONNECTION

    def _verified_to(self, conn, end, at):
        entry = self.verified.get(conn)
        if entry is None:
            _mark(self.verified, conn, [end, at])
        elif serial_gt(end, entry[0]):
            entry[0], entry[1] = end, at
        else:
            entry[1] = at

    def _unsure(self, conn, at):
        if conn not in self.unsure:
            self.counters["unsure_connections"] += 1
        _mark(self.unsure, conn, at)

    def _voted(self, statement, claim_raw):
        """After each vote cast (a hook for test faults, see faults.LyingVoteEngine)."""

    # ---- I/O, driven by the queue runner ------------------------------------------------------

    def flush(self):
        """Send the claims and votes gathered since the last flush, in signed batches."""
        config = self.config
        if self.claims_out:
            claims, self.claims_out = self.claims_out, []
            for chunk in _chunks(claims):
                raw = protocol.encode(protocol.CLAIM, self.name, chunk, self.key,
                                      config.generation)
                for statement in chunk:
                    claim = self.pending.get(statement.range_key)
                    if claim is not None:
                        claim.raw = raw
                for address in config.peers.values():
                    self._send(raw, address, config.port)
        if self.votes_out:
            votes, self.votes_out = self.votes_out, []
            primary = config.peers.get(config.primary)
            for chunk in _chunks(votes):
                raw = protocol.encode(protocol.VOTE, self.name, [v for v, _ in chunk], self.key,
                                      config.generation)
                if primary is not None:
                    self._send(raw, primary, config.port)
                for claim_raw in dict.fromkeys(c for _, c in chunk if c is not None):
                    self.reports.append(("evidence", [claim_raw, raw]))
        if self.abstains_out:
            abstains, self.abstains_out = self.abstains_out, []
            primary = config.peers.get(config.primary)
            for chunk in _chunks(abstains):
                if primary is not None:
                    self._send(protocol.encode(protocol.ABSTAIN, self.name, chunk, self.key,
                                               config.generation), primary, config.port)

    def _send(self, raw, address, port):
        try:
            self.send(raw, (address, port))
        except OSError:
            pass  # votes are best effort: a missing vote is a timeout, not an error

    def receive(self, data, now):
        """A datagram on the vote port: (token, payload) pairs to release."""
        try:
            batch = protocol.decode(data)
        except protocol.VotingError:
            self.counters["batches_rejected"] += 1
            return ()
        if batch.kind == protocol.CLAIM:
            self.on_claims(batch, now)
            return ()
        if batch.author not in self.config.peers:
            self.counters["batches_rejected"] += 1
            return ()
        if batch.kind == protocol.ABSTAIN:
            return self.on_abstain(batch, now)
        return self.on_votes(batch, now)

    def expire(self, now):
        """Tokens of segments held past ``hold_s`` (dropped: TCP resends them) or of connections
        given up on."""
        config = self.config
        dropped, self.dropped = self.dropped, []
        for key, claim in list(self.pending.items()):
            if now - claim.at > config.hold_s:
                del self.pending[key]
                dropped.append(claim.token)
                self.counters["vote_timeouts"] += 1
                self._maybe_report(claim, final=True)
        for key, claim in list(self.recent.items()):
            if now - claim.at > RECENT_S:
                del self.recent[key]
                self._maybe_report(claim, final=True)
        for client_key in list(self.waiting):
            waiting = self.waiting.pop(client_key)  # answers below may queue anew
            # a claim beyond what our stack sent, while our stack has been quiet for
            # PARTIAL_QUIET_S: the primary sent bytes we will not (a lying primary, or one of
            # us lags badly).
            # Vote with what we have, so that a majority can see it; a backup that is merely
            # behind keeps sending and keeps waiting.
            patience = max(config.hold_s, PARTIAL_QUIET_S)
            quiet = self.own_output.quiet_for(*client_key, now) >= patience
            kept = []
            for entry in waiting:
                age = now - entry[2]
                if quiet and age >= patience and entry[1] is not None:  # claims only:
                    # a wire copy we cannot match is the primary's data we never produce,
                    # which its claim (not its copy) already shows
                    self._answer(entry[0], entry[1], entry[2], entry[3], partial=True)
                elif age <= patience + 4 * config.hold_s:
                    kept.append(entry)
                else:
                    self.counters["claims_unanswerable"] += 1
            if kept:
                self.waiting[client_key] = kept + self.waiting.get(client_key, [])
        for conn in [c for c, (_, at) in self.abstained.items() if now - at > ABSTAINED_S]:
            del self.abstained[conn]
        for table in (self.unvotable, self.unsure):
            for conn in [c for c, at in table.items() if now - at > ABSTAINED_S]:
                del table[conn]
        for conn in [c for c, (_, at) in self.verified.items() if now - at > ABSTAINED_S]:
            del self.verified[conn]
        primary = config.primary == self.name
        for conn, since in list(self.outvoted.items()):
            if now - since >= OUTVOTED_RESET_S:
                del self.outvoted[conn]
                if primary:
                    self.resets.append(conn)
                    self.counters["outvoted_resets"] += 1
        return [token for token in dropped if token is not None]

    def take_reports(self, limit):
        out = []
        while self.reports and len(out) < limit:
            out.append(self.reports.popleft())
        return out


def _mark(table, conn, value):
    """table[conn] = value, the oldest entry making room beyond ABSTAINED_MAX."""
    if conn not in table and len(table) >= ABSTAINED_MAX:
        del table[next(iter(table))]
    table[conn] = value


def _chunks(items):
    for at in range(0, len(items), protocol.MAX_STATEMENTS):
        yield items[at:at + protocol.MAX_STATEMENTS]

