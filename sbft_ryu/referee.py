"""The controller's side of authentication and voting: one owned object, time passed in.

* **Authentication.** A replica with a key (``replica_key``) must sign every heartbeat
  (:func:`sbft_ryu.protocol.sign_body`) and include the nonce of the controller's last answer to
  it. Each accepted heartbeat rotates the nonce, so a replayed heartbeat never verifies, and
  without the key nobody can speak for that replica. A rejected heartbeat changes no state; its
  401 answer carries the current nonce (a restarted agent learns it that way).
* **Evidence.** Reports of disagreement arrive as signed vote batches. A batch counts only if
  its MAC verifies with its author's key and the reporter signed at least one of the batches
  itself; the :class:`~sbft_ryu.voting.Judge` then decides by majority.
"""

import ipaddress
import os

from sbft_ryu import protocol, voting


class AuthError(Exception):
    def __init__(self, message, nonce):
        super().__init__(message)
        self.nonce = nonce


class Referee:
    def __init__(self, config, new_nonce=lambda: os.urandom(12).hex()):
        self.config = config
        self.keys = dict(config.replica_keys)
        self._new_nonce = new_nonce
        self.nonces = {name: new_nonce() for name in self.keys}
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

    def authenticate(self, name, beat):
        """Raise AuthError unless ``beat`` is signed by ``name``'s key with its current nonce
        (replicas without a key are not authenticated); rotate the nonce when it is."""
        key = self.keys.get(name)
        if key is None:
            return None
        if beat.nonce != self.nonces[name] or not protocol.body_signed(key, name, beat.body):
            self.auth_failures[name] += 1
            reason = ("no nonce (sign with the nonce of this answer)" if beat.nonce is None
                      else "stale or replayed nonce" if beat.nonce != self.nonces[name]
                      else "MAC does not verify")
            raise AuthError(f"heartbeat of {name} not authenticated: {reason}",
                            self.nonces[name])
        self.nonces[name] = self._new_nonce()
        return self.nonces[name]

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
