"""Tests only: heartbeats in another replica's name, as a forger on the management network.

    python -m sbft_lab.forger --controller http://10.254.0.254:8080 --name lb1 \\
        --service-ok false --duration 3 --out forger.json [--udp-port 5558]

Over HTTP: unsigned heartbeats (what a keyless replica sends); with ``--udp-port``: UDP
datagrams signed with a random key, with the session nonce a 401 published and increasing
sequence numbers. Every ``--interval`` (bounded by ``--duration``). Writes
``{"http": {status: count}, "udp_sent": n, "udp_answers": n}``.
"""

import argparse
import collections
import http.client
import json
import os
import socket
import time
import urllib.parse

from sbft_ryu import beatwire


def _post(url, name, body, timeout=0.5):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 8080, timeout=timeout)
    try:
        conn.request("POST", f"/sbft/replicas/{name}/heartbeat", json.dumps(body).encode(),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, {}
    except OSError:
        return 0, {}
    finally:
        conn.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controller", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--service-ok", choices=("true", "false"), default="true")
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--udp-port", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    service_ok = args.service_ok == "true"
    statuses = collections.Counter()
    udp_sent = udp_answers = 0
    nonce = None
    sock = None
    if args.udp_port:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.01)
        host = urllib.parse.urlsplit(args.controller).hostname
        sock.connect((host, args.udp_port))
    key = os.urandom(32)
    end = time.monotonic() + args.duration
    seq = 10 ** 6  # far above an agent's: a window check alone would not stop it
    while time.monotonic() < end:
        seq += 1
        if sock is None or nonce is None:
            status, body = _post(args.controller, args.name,
                                 {"seq": seq, "service_ok": service_ok, "counters": {}})
            statuses[str(status)] += 1
            if isinstance(body.get("nonce"), str):
                nonce = body["nonce"]  # what a 401 publishes
        else:
            datagram, _ = beatwire.beat_datagram(key, args.name, seq, service_ok, nonce, {})
            try:
                sock.send(datagram)
                udp_sent += 1
                sock.recv(2048)
                udp_answers += 1
            except OSError:
                pass
        time.sleep(args.interval)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump({"http": dict(statuses), "udp_sent": udp_sent, "udp_answers": udp_answers},
                  handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
