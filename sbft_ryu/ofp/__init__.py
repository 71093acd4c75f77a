"""One translator per OpenFlow version, chosen by the version a switch negotiated.

A translator turns the version-neutral descriptions of :mod:`sbft_ryu.model` into Ryu parser
messages built with ``datapath=None``; the app attaches the live datapath only when it sends.
Translators keep per-switch state (which groups exist), so the app makes one per connection.
"""

from sbft_ryu.ofp import v10, v13
from sbft_ryu.ofp.common import TranslationError

__all__ = ["SUPPORTED_VERSIONS", "TranslationError", "make_translator"]

_REGISTRY = {
    v10.OFP_VERSION: v10.Translator,
    v13.OFP_VERSION: v13.Translator,
}

SUPPORTED_VERSIONS = tuple(sorted(_REGISTRY))


def make_translator(ofp_version):
    """A fresh translator for a switch that negotiated ``ofp_version``."""
    try:
        return _REGISTRY[ofp_version]()
    except KeyError:
        raise TranslationError(f"unsupported OpenFlow version 0x{ofp_version:02x}") from None
