"""The active-mode secret sealed for one keyed replica: ChaCha20-Poly1305 (the `cryptography`
package) under a key derived from that replica's ``replica_key``, the replica's name as
associated data. Only that replica opens it; a changed byte, another name or another key makes
:func:`unseal` fail. Used by the controller (seal, once per start) and the agent (unseal).
"""

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

NONCE = 12
PERSON = b"sbft-seal-v1"  # the derived key is for this use only (the replica key also MACs)


def _cipher(key):
    return ChaCha20Poly1305(hashlib.blake2b(key, digest_size=32, person=PERSON).digest())


def seal(key, name, secret, nonce=None):
    """``secret`` encrypted and authenticated for replica ``name``: nonce + ciphertext + tag."""
    nonce = os.urandom(NONCE) if nonce is None else nonce
    return nonce + _cipher(key).encrypt(nonce, secret, name.encode("ascii"))


def unseal(key, name, blob):
    """The secret, or ValueError if ``blob`` was not sealed for ``name`` under ``key``."""
    if len(blob) <= NONCE:
        raise ValueError("sealed secret too short")
    try:
        return _cipher(key).decrypt(blob[:NONCE], blob[NONCE:], name.encode("ascii"))
    except InvalidTag:
        raise ValueError("sealed secret does not open with this replica's key") from None
