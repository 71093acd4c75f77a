"""The only compatibility shims between Ryu 4.34, current eventlet and Python >= 3.11.

Ryu 4.34 (its last release) imports ``eventlet.wsgi.ALREADY_HANDLED`` at module level in
``ryu/app/wsgi.py``; eventlet removed that name in 0.33 and older eventlet releases do not run on
Python 3.11. ``ryu-manager`` imports ``ryu.app.wsgi`` before it loads any app, so the fix cannot
live in our app: a one-line ``.pth`` file in the environment (written by ``python -m
sbft_ryu._ryu_compat install``, which ``run.sh`` calls) runs :func:`install` at interpreter start.

:func:`install` costs nothing for programs that never import eventlet: it only adds an import
hook that, once ``eventlet.wsgi`` has been loaded, defines the missing name. The value matters
only to websocket responses (sbft_ryu serves none); eventlet >= 0.33 itself tracks "already
handled" responses through ``eventlet.wsgi.WSGI_LOCAL.already_handled``.

Python 3.12 removed ``distutils``, which ``ryu/flags.py`` imports; setuptools provides it again
through its own ``distutils-precedence.pth``, so setup.cfg requires setuptools on 3.12+.
"""

import importlib.abc
import importlib.machinery
import sys
import warnings

PTH_NAME = "sbft_ryu_compat.pth"
PTH_LINE = "import sbft_ryu._ryu_compat; sbft_ryu._ryu_compat.install()\n"
_PATCHED_MODULE = "eventlet.wsgi"


class _AlreadyHandled:
    """Stand-in for eventlet's removed sentinel: an empty WSGI body."""

    def __iter__(self):
        return iter(())

    def __repr__(self):
        return "ALREADY_HANDLED"


def _patch(module):
    if not hasattr(module, "ALREADY_HANDLED"):
        module.ALREADY_HANDLED = _AlreadyHandled()


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, wrapped):
        self._wrapped = wrapped

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        self._wrapped.exec_module(module)
        _patch(module)


class _EventletWsgiFinder(importlib.abc.MetaPathFinder):
    """Finds eventlet.wsgi through the normal path finder and patches it after it executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _PATCHED_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def install():
    """Make ``from eventlet.wsgi import ALREADY_HANDLED`` work; idempotent."""
    # eventlet >= 0.36 prints a deprecation banner on import; ryu-manager users cannot act on it.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    if _PATCHED_MODULE in sys.modules:
        _patch(sys.modules[_PATCHED_MODULE])
        return
    if not any(isinstance(finder, _EventletWsgiFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _EventletWsgiFinder())


def write_pth(site_dir):
    """Write the one-line hook into ``site_dir``; returns its path."""
    import os

    path = os.path.join(site_dir, PTH_NAME)
    with open(path, "w", encoding="ascii") as handle:
        handle.write(PTH_LINE)
    return path


def main(argv=None):
    import sysconfig

    argv = sys.argv[1:] if argv is None else argv
    if argv != ["install"]:
        print("usage: python -m sbft_ryu._ryu_compat install", file=sys.stderr)
        return 2
    print(write_pth(sysconfig.get_paths()["purelib"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
