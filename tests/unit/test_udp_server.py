"""The UDP heartbeat port's I/O shell: the native thread answers what ``fast`` answers and
hands SLOW datagrams to ``slow`` on the eventlet hub (a real socket on loopback)."""

import socket

import eventlet

from sbft_ryu import udp_server


def test_fast_answers_in_the_thread_and_slow_ones_reach_the_hub():
    seen = []

    def fast(data, address, now):
        seen.append(("fast", data, address))
        if data == b"boom":
            raise ValueError("a bug")
        return {b"fast": b"F", b"drop": None}.get(data, udp_server.SLOW)

    def slow(data, address):
        seen.append(("slow", data, address))
        return b"S:" + data

    server = udp_server.UdpHeartbeatServer(fast, slow)
    green = server.start("127.0.0.1", 0, eventlet.spawn)
    port = server.sock.getsockname()[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(0.05)
    try:
        answers = []
        for data in (b"fast", b"drop", b"slow", b"boom"):
            client.sendto(data, ("127.0.0.1", port))
            for _ in range(4 if data == b"drop" else 40):  # bounded: 2 s
                eventlet.sleep(0.01)  # (the hub runs the slow path meanwhile)
                try:
                    answers.append(client.recv(64))
                    break
                except socket.timeout:
                    continue
        assert answers == [b"F", b"S:slow", b"S:boom"]  # (nothing for "drop")
        assert [kind for kind, *_ in seen] == ["fast", "fast", "fast", "slow", "fast", "slow"]
        assert {address for *_, address in seen} == {"127.0.0.1"}
        assert server.errors == 1
    finally:
        green.kill()
        client.close()
