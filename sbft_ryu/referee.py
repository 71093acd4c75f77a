"""The controller's side of authentication and voting: one owned object, time passed in.

* **Authentication.** A replica with a key (``replica_key``) signs every heartbeat
  (:func:`sbft_ryu.protocol.sign_body`, or a UDP datagram: :mod:`sbft_ryu.beatwire`) with the
  nonce of its *session* and a sequence number. A session starts when a heartbeat signed with
  a nonce the controller offered (in a 401 answer) verifies; from then on a heartbeat counts
  only with that nonce and a sequence number above the last accepted one, by at most
  SEQ_WINDOW. So a replayed heartbeat never counts, a lost answer costs nothing (the nonce
  does not change), and without the key nobody can speak for that replica. A rejected
  heartbeat changes no session and no cluster state; its 401 answer carries a fresh offer
  (the last OFFERS_KEPT are honoured: a restarted agent starts a session that way).
* **Pinned sources.** A replica with a ``replica_source`` is heard over HTTP only from that
  address (:class:`SourceError`, a 403, otherwise).
* **Evidence.** Reports of disagreement arrive as signed vote batches. A batch counts only if
  its MAC verifies with its author's key and the reporter signed at least one of the batches
  itself; the :class:`~sbft_ryu.voting.Judge` then decides by majority.
"""

import ipaddress
import os
from collections import deque

from sbft_ryu import protocol, seal, voting

OFFERS_KEPT = 8  # offered nonces still honoured (a flood of bad heartbeats pushes out old ones)
SEQ_WINDOW = 1 << 16  # how far a session's sequence numbers may jump (about 55 min at 20/s)
KEY, SOURCE = "key", "source"  # how a replica's heartbeats are authenticated


class AuthError(Exception):
    def __init__(self, message, nonce):
        super().__init__(message)
        self.nonce = nonce


class SourceError(AuthError):
    """A pinned replica's heartbeat from another address (403: no nonce helps)."""

    def __init__(self, message):
        super().__init__(message, None)


class Referee:
    def __init__(self, config, new_nonce=lambda: os.urandom(12).hex()):
        self.config = config
        self.keys = dict(config.replica_keys)
        self.sources = dict(config.replica_sources)
        self._new_nonce = new_nonce
        self.nonces = {name: new_nonce() for name in self.keys}  # each session's nonce
        self.last_seq = {name: None for name in self.keys}  # None: no heartbeat in it yet
        self.offers = {name: deque(maxlen=OFFERS_KEPT) for name in self.keys}
        # sealed once per start: the same bytes in every answer (agents compare answers)
        self.sealed = ({name: seal.seal(key, name, config.active_secret)
                        for name, key in self.keys.items()} if config.active_secret else {})
        self.judge = (voting.Judge([r.name for r in config.nodes], config.f,
                                   config.suspicion_threshold, config.suspicion_half_life,
                                   rate=config.suspicion_rate,
                                   voters=[r.name for r in config.replicas])
                      if config.voting else None)
        self.auth_failures = {r.name: 0 for r in config.nodes}
        # tainted connections an earlier controller process stored: a new primary still resets
        # them (Core.restore fills this, Core.tick empties it once the judge would have)
        self.restored_tainted = []
        self._generations = {}  # name -> the generation the judge was last told of

    def how(self, name):
        """How ``name``'s heartbeats are authenticated: KEY, SOURCE, or None (not at all)."""
        return KEY if name in self.keys else SOURCE if name in self.sources else None

    def authenticate(self, name, beat, address=None):
        """Raise AuthError unless ``beat`` (over HTTP, from ``address``) may speak for
        ``name``: from its pinned source, if any; signed by its key in its session (or with an
        offered nonce: a new session). Returns the session's nonce (None without a key)."""
        source = self.sources.get(name)
        if source is not None and address != source:
            self.auth_failures[name] += 1
            raise SourceError(f"heartbeats of {name} are accepted only from its pinned "
                              f"source address, not from {address}")
        key = self.keys.get(name)
        if key is None:
            return None
        if beat.nonce is None:
            return self._reject(name, "no nonce (sign with the nonce of this answer)")
        if not protocol.body_signed(key, name, beat.body):
            return self._reject(name, "MAC does not verify")
        if beat.nonce in self.offers[name]:  # a new session (an agent started or resyncs)
            self.nonces[name], self.last_seq[name] = beat.nonce, beat.seq
            self.offers[name].clear()
            return beat.nonce
        if beat.nonce != self.nonces[name]:
            return self._reject(name, "stale or replayed nonce")
        if not self.in_window(name, beat.seq):
            return self._reject(name, "sequence number not above the last one (replayed) "
                                      "or too far beyond it")
        self.last_seq[name] = beat.seq
        return beat.nonce

    def in_window(self, name, seq):
        last = self.last_seq[name]
        return last is None or last < seq <= last + SEQ_WINDOW

    def accept_datagram(self, name, nonce, seq):
        """A UDP heartbeat whose MAC verified with ``name``'s key: True (and its sequence
        number recorded) if it belongs to the current session and moves it forward."""
        if nonce != self.nonces[name] or not self.in_window(name, seq):
            self.auth_failures[name] += 1
            return False
        self.last_seq[name] = seq
        return True

    def secret_field(self, name):
        """What an answer to ``name`` carries of the active-mode secret: sealed under its key,
        in clear to a pinned source, nothing to a replica nobody authenticated."""
        how = self.how(name)
        if how == KEY and name in self.sealed:
            return {"sealed": self.sealed[name].hex()}
        if how == SOURCE:
            return {"secret": self.config.active_secret.hex()}
        return {}

    def _reject(self, name, reason):
        self.auth_failures[name] += 1
        offer = self._new_nonce()
        self.offers[name].append(offer)
        raise AuthError(f"heartbeat of {name} not authenticated: {reason}", offer)

    def compared(self, reporter, counters, now):
        """An authenticated heartbeat's count of ranges its replica compared (the judge's
        denominator for the others' divergence rates)."""
        if self.judge is not None:
            total = counters.get("claims", 0) + counters.get("votes_cast", 0)
            if isinstance(total, (int, float)) and total >= 0:
                self.judge.compared(reporter, total, now)

    def evidence(self, reporter, items, now):
        """Verified evidence → names the judge found byzantine (disagreeing with the majority
        often enough)."""
        guilty = set()
        if self.judge is None:
            return guilty
        for item in items:
            batches = []
            for raw in item:
                try:
                    batch = protocol.decode(raw)
                except protocol.VotingError:
                    batch = None
                key = self.keys.get(batch.author) if batch else None
                if key is None or not protocol.verify(batch, key):
                    batches = None
                    break
                batches.append(batch)
            if not batches or not any(b.author == reporter for b in batches):
                self.judge.rejected(reporter)  # forged, garbled, or nothing of its own
                continue
            guilty |= self.judge.opinions(reporter, batches, now)
        return guilty

    def wire(self, reporter, reports, epoch_primary, now):
        """Wire reports → the primaries (of the reported epochs) that f+1 backups saw lie."""
        guilty = set()
        if self.judge is None:
            return guilty
        for client, port, epoch, start, end, *generation in reports:
            primary = epoch_primary.get(epoch)
            if primary and self.judge.wire(reporter, primary, epoch, client, port, start, end,
                                           now, generation[0] if generation else None):
                guilty.add(primary)
        return guilty

    def tainted(self, epoch):
        """Connections an earlier primary corrupted on the wire: a new primary (of ``epoch``)
        resets them instead of continuing them."""
        if self.judge is None:
            return []
        live = [[str(ipaddress.IPv4Address(client)), port]
                for client, port in self.judge.tainted(epoch - 1)]
        return live + [entry for entry in self.restored_tainted if entry not in live]

    def sync(self, voters, generations, generation_epochs, now):
        """Tell the judge the current voting set and every generation that began since the
        last call (a replica entering the members: its older evidence stops counting)."""
        if self.judge is None:
            return
        self.judge.voters = set(voters)
        for name, generation in generations.items():
            if generation and generation != self._generations.get(name):
                self._generations[name] = generation
                self.judge.new_generation(name, generation_epochs.get(name, 0), now,
                                          generation)

    def readmit(self, name):
        if self.judge is not None:
            self.judge.readmit(name)
