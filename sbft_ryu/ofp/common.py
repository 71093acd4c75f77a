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
