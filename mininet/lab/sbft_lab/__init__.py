"""The sbft_ryu lab: whole Mininet runs for the tests, demos and benchmarks.

* :mod:`sbft_lab.lab`: :class:`~sbft_lab.lab.Lab` (ryu-manager + the topology of
  ``mininet/sbft_topo.py``, stopped by PID and ``net.stop()``), the lab lock, polling helpers;
* :mod:`sbft_lab.demo`: the scripted demos (``python -m sbft_lab --demo``);
* traffic tools run inside Mininet hosts: :mod:`~sbft_lab.pacer` (open-loop client),
  :mod:`~sbft_lab.timeline` (its log), :mod:`~sbft_lab.fetch` (downloads),
  :mod:`~sbft_lab.stream_backend` (large deterministic objects).

Importing this package has no side effects; :mod:`sbft_lab.lab` loads the topology file.
"""
