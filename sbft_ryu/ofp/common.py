"""Helpers both translators share."""

import ipaddress


def prefix_len(address, mask):
    """CIDR prefix length of a dotted mask, or None when the mask is not contiguous."""
    try:
        return ipaddress.IPv4Network(f"{address}/{mask}", strict=False).prefixlen
    except ValueError:
        return None


class TranslationError(ValueError):
    """A description this OpenFlow version cannot express."""


class PortReader:
    """Port state from a switch's messages, read with the constants of the translator's
    OpenFlow version (``ofp``, its ofproto module)."""

    ofp = None

    def port_usable(self, port):
        """Neither administratively down nor without a link."""
        return (not port.config & self.ofp.OFPPC_PORT_DOWN
                and not port.state & self.ofp.OFPPS_LINK_DOWN)

    def port_status(self, message):
        """(port number, usable) from a port-status message (a deleted port is not usable)."""
        desc = message.desc
        return desc.port_no, message.reason != self.ofp.OFPPR_DELETE and self.port_usable(desc)
