"""Traffic tools for demos, tests and benchmarks (run inside Mininet hosts)."""
