"""Byzantine output voting: the controller's judge (the wire format is :mod:`sbft_ryu.protocol`).

Replicas compare their output in the shared sequence space of active mode. A *statement* says
"for connection C, the bytes [start, end) of the reply stream have digest D"; replicas exchange
them in signed batches over UDP on the management network:

* the primary's agent holds each reply segment and sends a **claim** (its statement) to every
  backup; it releases the segment once ``f`` backups sent a **vote** with the same digest;
* a backup's agent answers claims with votes about its own output, and compares the primary's
  actual packets that the switch copies to it (the **wire check**: a host that bypasses its own
  agent is still seen on the wire).

Every batch carries a MAC with its author's key (one key per replica, known to that replica and
to the controller only), so a replica can neither speak nor vote for another, and anyone can
forward a batch as evidence: the controller verifies it. Agents report disagreements with the
batches that show them; the :class:`Judge` takes, per range, the digest that ``n - f`` replicas
agree on as the truth and gives each replica that said otherwise a point of suspicion, which
decays with a half-life. A replica is byzantine when its suspicion reaches the threshold *and*
is at least ``rate`` of the ranges it was compared on in the same decaying window: honest
nondeterminism (a Date header crossing a second boundary) makes a small fraction of ranges
differ however busy the tier is, a liar a large one. The ranges compared come from the
authenticated heartbeats of the *other* replicas (the f-th largest of their counts), so a
replica cannot dilute its own record, and f liars cannot shrink an honest one's. Wire
divergence cannot be signed by the primary; it counts once ``f + 1`` distinct backups report
the same range of the same connection.

Everything here is pure: plain values in, values out; time is passed in.
"""

import math
from dataclasses import dataclass

from sbft_ryu import protocol

TAINT_S = 60.0
# How long after a replica's entry statements signed in its older generation are still taken
# for old evidence (dropped). Honest old statements reach the judge within the agents' vote
# window (2 s) plus a heartbeat; an honest agent signs with its new generation from its next
# heartbeat answer on. Later, an old generation is a liar's attempt to have its statements
# dropped, and they are judged like any other.
GENERATION_GRACE_S = 3.0


# ---- the controller's judge ---------------------------------------------------------------------

@dataclass
class ReplicaVotes:
    divergences: int = 0  # ranges where this replica was in the minority
    wire_divergences: int = 0  # primary epochs in which f+1 backups saw its wire bytes differ
    reported: int = 0  # evidence items this replica sent that verified
    rejected: int = 0  # evidence items it sent that did not verify (forged, garbled)
    suspicion: float = 0.0
    suspicion_at: float = 0.0


class Judge:
    """Decides by majority who lied, from verified statements; never from a reporter's say-so.

    Only the *voters* (the current voting set: n configured places, spares promoted into them)
    count, as authors of statements and as reporters; ``names`` are every replica that may
    become one. Each entry of a replica into the members starts a new generation
    (:meth:`new_generation`); what belongs to an older one is dropped:

    * a statement signed with an older generation than its author's current one (every batch
      carries its author's generation, :mod:`sbft_ryu.protocol`), within GENERATION_GRACE_S
      of the author's entry. An honest agent signs with a new generation once it has learnt
      it, and from then on abstains on connections that began before (so its new-generation
      statements are all about later connections); after the grace an old generation can
      only be a liar hiding its statements, which are then judged as any others;
    * a wire report made in an older generation of its reporter (agents put their generation
      into each report of their signed heartbeat): exact; and one about an epoch before the
      reporter's or the accused primary's generation began. The epoch rule is exact for the
      primary (a replica becomes primary only in an epoch after its entry) and is all there
      is for a report that names no generation (the field is optional on the REST API); for
      a backup it adds nothing once reports carry generations (a backup's entry changes no
      epoch). A reporter's unconfirmed reports are also forgotten at its entry
      (:meth:`new_generation`)."""

    def __init__(self, names, f, threshold=3.0, half_life=5.0, window=2.0, rate=0.01,
                 voters=None):
        self.names = tuple(names)
        self.f = f
        self.voters = set(self.names if voters is None else voters)
        self.quorum = len(self.voters) - f  # agreeing replicas that make a digest the truth
        self.threshold = threshold
        self.half_life = half_life
        self.rate = rate
        self.window = window  # how long a range's opinions wait for the rest
        self.stats = {name: ReplicaVotes() for name in self.names}
        self._opinions = {}  # range key -> ({author: digest}, first seen, decided)
        self._wire = {}  # (epoch, client, port, start, end) -> (reporters, first seen, counted)
        self._compared = {name: [0.0, 0.0, None] for name in self.names}  # mass, at, last total
        self.generations = {}  # name -> (epoch, at): when its current generation began
        self.generation = {}  # name -> its current generation (0 until the first entry)
        self.stale = 0  # statements and wire reports dropped as from an older generation

    def _decayed(self, value, since, now):
        return value * math.pow(0.5, max(0.0, now - since) / self.half_life)

    def suspicion(self, name, now):
        stats = self.stats[name]
        return self._decayed(stats.suspicion, stats.suspicion_at, now)

    def compared(self, reporter, total, now):
        """``reporter``'s authenticated running count of ranges it compared (claims it made as
        primary plus votes it cast as backup). The first count is a baseline; a smaller one
        means its agent restarted."""
        entry = self._compared[reporter]
        mass, at, last = entry
        delta = 0 if last is None else total - last if total >= last else total
        entry[:] = [self._decayed(mass, at, now) + delta, now, total]

    def compared_mass(self, name, now):
        """Ranges ``name`` took part in lately, by the others' count (the f-th largest)."""
        others = sorted((self._decayed(mass, at, now) for other, (mass, at, _)
                         in self._compared.items() if other != name), reverse=True)
        return others[self.f - 1] if len(others) >= self.f else 0.0

    def divergence_rate(self, name, now):
        return self.suspicion(name, now) / max(1.0, self.compared_mass(name, now))

    def _suspect(self, name, now, weight=1.0):
        stats = self.stats[name]
        stats.suspicion = self.suspicion(name, now) + weight
        stats.suspicion_at = now
        return (stats.suspicion >= self.threshold and
                stats.suspicion >= self.rate * self.compared_mass(name, now))

    def opinions(self, reporter, batches, now):
        """Verified batches a reporter forwarded: returns the names that reached the threshold.

        ``batches`` holds only batches whose MAC verified with their author's key."""
        self.expire(now)
        if reporter not in self.voters:
            return set()  # a spare's or an excluded replica's word counts for nothing
        self.stats[reporter].reported += 1
        guilty = set()
        keys = set()
        for batch in batches:
            if batch.author not in self.voters or batch.kind == protocol.ABSTAIN:
                continue  # (an abstention states no digest)
            if batch.generation < self.generation.get(batch.author, 0) and \
                    now - self.generations[batch.author][1] <= GENERATION_GRACE_S:
                self.stale += len(batch.statements)
                continue
            for statement in batch.statements:
                key = statement.range_key
                entry = self._opinions.setdefault(key, [{}, now, False])
                entry[0].setdefault(batch.author, statement.digest)
                keys.add(key)
        for key in keys:
            entry = self._opinions[key]
            said = {a: d for a, d in entry[0].items() if a in self.voters}
            if entry[2]:
                continue
            counts = {}
            for value in said.values():
                counts[value] = counts.get(value, 0) + 1
            truth = [value for value, count in counts.items() if count >= self.quorum]
            if not truth or len(counts) == 1:
                continue  # no majority yet, or nobody disagrees
            entry[2] = True
            for author, value in said.items():
                if value != truth[0]:
                    self.stats[author].divergences += 1
                    if self._suspect(author, now):
                        guilty.add(author)
        return guilty

    def rejected(self, reporter):
        self.stats[reporter].rejected += 1

    def wire(self, reporter, primary, epoch, client, port, start, end, now, generation=None):
        """A backup saw the primary's packet on the wire differ from its own output for
        [start, end): f + 1 backups saying so of the same range convict the primary (one alone
        may be an honest minority, e.g. a Date header its own backend request got).
        ``generation``: the reporter's when it saw it (None: not said)."""
        self.expire(now)
        if reporter == primary or reporter not in self.voters:
            return False  # a primary's word about its own wire counts for nothing
        if self._before_generation(reporter, epoch) or self._before_generation(primary, epoch) \
                or (generation is not None and generation < self.generation.get(reporter, 0)):
            self.stale += 1
            return False
        key = (epoch, client, port, start, end)
        entry = self._wire.setdefault(key, [set(), now, False])
        entry[0].add(reporter)
        reporters = entry[0] & self.voters
        if entry[2] or len(reporters) < self.f + 1 or epoch in self._convicted_epochs():
            return False  # (once per epoch: later ranges only taint their connections)
        entry[2] = True
        self.stats[primary].wire_divergences += 1
        return True

    def _convicted_epochs(self):
        return {key[0] for key, v in self._wire.items() if v[2]}

    def new_generation(self, name, epoch, now, generation=None):
        """``name`` entered the members anew (in ``epoch``, at ``now``) with ``generation``
        (default: the next one): forget what it said in ranges not decided yet and its
        unconfirmed wire reports; drop later evidence of its older generations."""
        self.generations[name] = (epoch, now)
        self.generation[name] = (self.generation.get(name, 0) + 1 if generation is None
                                 else generation)
        for said, _, decided in self._opinions.values():
            if not decided:
                said.pop(name, None)
        for reporters, _, counted in self._wire.values():
            if not counted:
                reporters.discard(name)

    def _before_generation(self, name, epoch):
        began = self.generations.get(name)
        return began is not None and epoch < began[0]

    def tainted(self, epoch):
        """Connections whose wire bytes diverged in ``epoch`` or before (to be reset, never
        spliced; epochs without a primary may lie between): in an epoch where f + 1 backups
        convicted the primary on one range, a single backup's report suffices for the other
        connections."""
        convicted = {ep for ep in self._convicted_epochs() if ep <= epoch}
        return sorted({(client, port) for (ep, client, port, _, _) in self._wire
                       if ep in convicted})

    def expire(self, now):
        """Forget undecided ranges after ``window``; wire verdicts (the tainted connections a
        new primary resets) after TAINT_S."""
        for key in [k for k, v in self._opinions.items() if now - v[1] > self.window]:
            del self._opinions[key]
        convicted = self._convicted_epochs()
        for key in [k for k, v in self._wire.items()
                    if now - v[1] > (TAINT_S if k[0] in convicted else self.window)]:
            del self._wire[key]

    def readmit(self, name):
        self.stats[name].suspicion = 0.0
