"""Loading ``mininet/sbft_topo.py``, the topology file ``mn --custom`` runs, as a module.

That file is not importable by name: ``mininet/`` must not become a package (its name would
shadow Mininet's own), and ``mn`` runs the file by path under the system interpreter. The lab
loads the file of the checkout it sits in by path, once, as the module ``sbft_topo``.
"""

import importlib.util
import os
import sys

# This package is installed editable from <repo>/mininet/lab (./run.sh setup), so its source
# folder is <repo>/mininet/lab/sbft_lab and the topology file is <repo>/mininet/sbft_topo.py.
TOPO_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "sbft_topo.py")
MODULE_NAME = "sbft_topo"


def load(path=TOPO_PATH):
    """The topology module (loaded at most once per process)."""
    module = sys.modules.get(MODULE_NAME)
    if module is not None:
        return module
    if not os.path.isfile(path):
        raise ImportError(f"{path} is missing: sbft_lab must be installed editable from its "
                          "checkout (./run.sh setup runs pip install -e mininet/lab)")
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE_NAME]
        raise
    return module
