"""Stopping a process the lab started, by its handle (never by name: other labs may run)."""

import signal
import subprocess


def stop_process(proc, timeout=5, frozen=False):
    """SIGTERM, then SIGKILL after ``timeout`` s; ``frozen``: SIGCONT first (a test may have
    stopped it with SIGSTOP, and a stopped process does not act on SIGTERM)."""
    if proc is None or proc.poll() is not None:
        return
    if frozen:
        proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
