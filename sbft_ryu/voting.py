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

TAINT_S = 60.0


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
    """Decides by majority who lied, from verified statements; never from a reporter's say-so."""

    def __init__(self, names, f, threshold=3.0, half_life=5.0, window=2.0, rate=0.01):
        self.names = tuple(names)
        self.f = f
        self.quorum = len(self.names) - f  # agreeing replicas that make a digest the truth
        self.threshold = threshold
        self.half_life = half_life
        self.rate = rate
        self.window = window  # how long a range's opinions wait for the rest
        self.stats = {name: ReplicaVotes() for name in self.names}
        self._opinions = {}  # range key -> ({author: digest}, first seen, decided)
        self._wire = {}  # (epoch, client, port, start, end) -> (reporters, first seen, counted)
        self._compared = {name: [0.0, 0.0, None] for name in self.names}  # mass, at, last total

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
        self.stats[reporter].reported += 1
        guilty = set()
        for batch in batches:
            for statement in batch.statements:
                key = statement.range_key
                entry = self._opinions.setdefault(key, [{}, now, False])
                entry[0].setdefault(batch.author, statement.digest)
        for key in {s.range_key for b in batches for s in b.statements}:
            entry = self._opinions[key]
            said, _, decided = entry
            if decided:
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

    def wire(self, reporter, primary, epoch, client, port, start, end, now):
        """A backup saw the primary's packet on the wire differ from its own output for
        [start, end): f + 1 backups saying so of the same range convict the primary (one alone
        may be an honest minority, e.g. a Date header its own backend request got)."""
        self.expire(now)
        if reporter == primary:
            return False  # a primary's word about its own wire counts for nothing
        key = (epoch, client, port, start, end)
        entry = self._wire.setdefault(key, [set(), now, False])
        entry[0].add(reporter)
        if entry[2] or len(entry[0]) < self.f + 1:
            return False
        entry[2] = True
        self.stats[primary].wire_divergences += 1
        return True

    def tainted(self, epoch):
        """Connections whose wire bytes diverged in ``epoch`` or before (to be reset, never
        spliced; epochs without a primary may lie between): in an epoch where f + 1 backups
        convicted the primary on one range, a single backup's report suffices for the other
        connections."""
        convicted = {key[0] for key, v in self._wire.items() if v[2] and key[0] <= epoch}
        return sorted({(client, port) for (ep, client, port, _, _) in self._wire
                       if ep in convicted})

    def expire(self, now):
        """Forget undecided ranges after ``window``; wire verdicts (the tainted connections a
        new primary resets) after TAINT_S."""
        for key in [k for k, v in self._opinions.items() if now - v[1] > self.window]:
            del self._opinions[key]
        convicted = {key[0] for key, v in self._wire.items() if v[2]}
        for key in [k for k, v in self._wire.items()
                    if now - v[1] > (TAINT_S if k[0] in convicted else self.window)]:
            del self._wire[key]

    def readmit(self, name):
        self.stats[name].suspicion = 0.0
