"""What a switch already holds, and the difference to what it should hold (both versions).

A reconnecting switch keeps its tables (a controller restart must not blip the service), so
instead of wiping them the controller reads them (flow stats and, on OpenFlow 1.3, group
descriptions), and a translator sends only the difference: strict deletes of entries nobody
wants, adds of missing or changed entries, group adds or modifies (never an add over an
existing group: that is an error in 1.3). Entries are compared in their wire form, as the
translator would send them and as the switch reports them, so both sides go through the same
parser; a false "changed" only re-adds an identical entry (harmless), a false "stale" would
delete one, so keys (table, priority, match) are compared with care.
"""

from dataclasses import dataclass, field


def wire(*parts):
    """The serialised bytes of parser objects that have ``serialize(buf, offset)``."""
    out = bytearray()
    for part in parts:
        buf = bytearray()
        part.serialize(buf, 0)
        out += buf
    return bytes(out)


@dataclass
class Tables:
    """What one switch holds: flow key → (content, the stats entry); group id → content."""

    flows: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.flows) + len(self.groups)


class Reader:
    """Collects multipart replies until every requested kind is complete.

    ``kinds``: the reply kinds to wait for ("flows", "groups"); ``more(msg)`` tells whether a
    reply has more parts coming; ``flow_entry(stats)`` → (key, content)."""

    def __init__(self, kinds, more, flow_entry, group_entry=None):
        self.pending = set(kinds)
        self.tables = Tables()
        self._more = more
        self._flow_entry = flow_entry
        self._group_entry = group_entry

    def add(self, kind, msg):
        """One reply; the Tables once everything has arrived, else None."""
        if kind not in self.pending:
            return None
        for stats in msg.body:
            if kind == "flows":
                key, content = self._flow_entry(stats)
                self.tables.flows[key] = (content, stats)
            else:
                group_id, content = self._group_entry(stats)
                self.tables.groups[group_id] = content
        if not self._more(msg):
            self.pending.discard(kind)
        return None if self.pending else self.tables


def diff_flows(wanted, found):
    """``wanted``: key → (content, message to add); ``found``: a Tables.

    Returns (stale stats entries, messages to add)."""
    stale = [stats for key, (_content, stats) in found.flows.items() if key not in wanted]
    adds = [message for key, (content, message) in wanted.items()
            if key not in found.flows or found.flows[key][0] != content]
    return stale, adds
