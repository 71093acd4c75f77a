"""Durable controller state behind one small interface: ``load()`` and ``save(state)``.

The state is a plain JSON-able dict (:mod:`sbft_ryu.core` builds and reads it); a store only
keeps it. :class:`FileStore` writes a whole new file each time (temporary file, fsync, rename,
fsync of the directory), mode 0600 because it may hold the active-mode secret; :class:`NullStore`
keeps nothing (``state_file =`` empty); :class:`sbft_ryu.etcd_store.EtcdStore` keeps it in etcd
for several controllers and raises :class:`NotWritten` when this controller may not write.

Writes are ordered: ``save`` runs one write at a time under the store's lock, in call order,
and returns once the state is on disk (write-ahead: the caller acts on it only then). The
blocking part runs through ``run`` (the app passes ``eventlet.tpool.execute``, so an fsync
never stalls eventlet's hub; tests pass a plain call).

A missing file is a first start. A file that cannot be read or parsed, or one written by a
newer format, raises :class:`StateError`, which names the file and the reason: the app stops
rather than start fresh and forget a conviction.
"""

import contextlib
import json
import os
import tempfile

FORMAT_VERSION = 1
FILE_NAME = "state.json"


class StateError(Exception):
    """The state file cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason):
        super().__init__(f"state file {path}: {reason}")
        self.path = path
        self.reason = reason


class NotWritten(Exception):
    """A store that may not write now (a controller that is not, or no longer, the leader):
    nothing was written and the caller must not act on the state it offered."""


def parse_state(data, path):
    """Stored bytes → the state dict; StateError (naming ``path``) if unusable."""
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateError(path, f"corrupt (not JSON: {exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("version"), int) \
            or isinstance(state.get("version"), bool):
        raise StateError(path, "corrupt (no format version)")
    if state["version"] > FORMAT_VERSION:
        raise StateError(path, f"format version {state['version']} is newer than "
                         f"this controller's ({FORMAT_VERSION})")
    if state["version"] < 1:
        raise StateError(path, f"corrupt (format version {state['version']})")
    return state


def encode_state(state):
    return json.dumps({**state, "version": FORMAT_VERSION}, sort_keys=True).encode()


def default_path(euid=None, environ=None):
    """Where the state lives when ``state_file`` is not set: /var/lib/sbft_ryu as root, the
    user's state directory ($XDG_STATE_HOME, else ~/.local/state) otherwise."""
    euid = os.geteuid() if euid is None else euid
    environ = os.environ if environ is None else environ
    if euid == 0:
        return os.path.join("/var/lib/sbft_ryu", FILE_NAME)
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "sbft_ryu", FILE_NAME)


def _direct(function, *args):
    return function(*args)


class NullStore:
    """Persistence off: nothing is loaded, nothing is kept."""

    path = None

    def load(self):
        return None

    def save(self, state):
        return None


class FileStore:
    """One JSON file. ``lock``: a context manager serialising writes (a green semaphore in the
    app); ``run(function, *args)``: how the blocking write is run."""

    def __init__(self, path, lock=None, run=_direct):
        self.path = path
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._run = run
        self.writes = 0

    def check_writable(self):
        """Create the directory if missing and prove a file can be written there (StateError
        otherwise): at start, before any switch is touched."""
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-", delete=True):
                pass
        except OSError as exc:
            raise StateError(self.path, f"directory not writable ({exc.strerror or exc})") \
                from None

    def load(self):
        """The stored state (a dict with its ``version``), or None when there is no file."""
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(self.path, f"cannot be read ({exc.strerror or exc})") from None
        return parse_state(data, self.path)

    def save(self, state):
        """Write ``state`` (with the format version) durably; returns when it is on disk."""
        data = encode_state(state)
        with self._lock:
            self._run(_write_atomically, self.path, data)
            self.writes += 1


def _write_atomically(path, data):
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".state-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # the rename itself survives a power cut
    finally:
        os.close(directory_fd)
