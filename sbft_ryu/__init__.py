"""sbft_ryu: a Byzantine-fault-tolerant load-balancer tier on SDN."""

__version__ = "0.1.0"
