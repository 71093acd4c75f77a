"""The NFQUEUE agent that runs on each LB replica (``sbft-agent``)."""
