"""Who may take operator actions (every state-changing request that is not a heartbeat).

With ``api_token_file`` configured: whoever sends ``Authorization: Bearer <token>`` with that
token (compared in constant time; the token is never logged or echoed). Without it: requests
from loopback only, so an API bound to every interface does not hand the tier to its network.
"""

import hmac
import ipaddress

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sbft"'}


class Denied(Exception):
    def __init__(self, code, message, headers=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def check(token, authorization, remote_addr):
    """Return if the request may act; Denied (401 with a Bearer challenge, or 403 from off
    loopback when no token is configured) otherwise."""
    if token is None:
        if _loopback(remote_addr):
            return
        raise Denied(403, "operator actions are accepted from loopback only: configure "
                          "[sbft] api_token_file to allow them from elsewhere")
    scheme, _, given = str(authorization or "").strip().partition(" ")
    offered = given.strip().encode("utf-8", "replace")
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered, token):
        raise Denied(401, "operator actions need 'Authorization: Bearer <token>' with the "
                          "token of api_token_file (missing or wrong)", CHALLENGE)


def _loopback(address):
    try:
        return ipaddress.ip_address(str(address)).is_loopback
    except ValueError:
        return False
