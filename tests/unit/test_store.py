"""Tests for sbft_ryu.store: where the state lives, how it is written, and every way a stored
file can be refused (one StateError naming the file and the reason)."""

import json
import os
import stat
import threading

import pytest

from sbft_ryu import store
from sbft_ryu.store import FileStore, NullStore, StateError

DEFAULT_PATH = store.default_path  # (the unit conftest points the default at tmp per test)


def test_the_default_location_as_root_and_as_a_user():
    assert DEFAULT_PATH(0, {}) == "/var/lib/sbft_ryu/state.json"
    assert DEFAULT_PATH(1000, {"HOME": "/home/u"}) == \
        "/home/u/.local/state/sbft_ryu/state.json"
    assert DEFAULT_PATH(1000, {"HOME": "/home/u", "XDG_STATE_HOME": "/x"}) == \
        "/x/sbft_ryu/state.json"


def test_a_missing_file_is_a_first_start_and_nothing_is_kept_without_a_file(tmp_path):
    assert FileStore(str(tmp_path / "state.json")).load() is None
    assert NullStore().load() is None and NullStore().save({"a": 1}) is None


def test_saved_state_comes_back_with_its_version_and_mode_0600(tmp_path):
    path = tmp_path / "state.json"
    kept = FileStore(str(path))
    kept.save({"epoch": 3})
    assert kept.load() == {"epoch": 3, "version": store.FORMAT_VERSION}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left
    kept.save({"epoch": 4})
    assert kept.load()["epoch"] == 4 and kept.writes == 2


@pytest.mark.parametrize("text, reason", [
    (b"{not json", "corrupt (not JSON"),
    (b"\xff\xfe", "corrupt (not JSON"),
    (b"[1, 2]", "corrupt (no format version)"),
    (b'{"epoch": 1}', "corrupt (no format version)"),
    (b'{"version": true}', "corrupt (no format version)"),
    (b'{"version": 0}', "corrupt (format version 0)"),
    (b'{"version": 2}', "format version 2 is newer than this controller's (1)"),
])
def test_a_file_that_cannot_be_used_is_one_error_naming_file_and_reason(tmp_path, text,
                                                                        reason):
    path = tmp_path / "state.json"
    path.write_bytes(text)
    with pytest.raises(StateError) as info:
        FileStore(str(path)).load()
    assert str(info.value).startswith(f"state file {path}: {reason}")
    assert "\n" not in str(info.value)


def test_an_unreadable_file_is_refused(tmp_path):
    path = tmp_path / "state.json"
    path.mkdir()  # a directory where the file should be: unreadable as root too
    with pytest.raises(StateError, match=r"cannot be read"):
        FileStore(str(path)).load()


def test_the_directory_is_created_or_refused(tmp_path):
    FileStore(str(tmp_path / "new" / "dir" / "state.json")).check_writable()
    assert (tmp_path / "new" / "dir").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError) as info:
        FileStore(str(blocker / "state.json")).check_writable()
    assert str(info.value).startswith(f"state file {blocker}/state.json: directory not "
                                      "writable")


def test_writes_go_through_run_one_at_a_time_in_order(tmp_path):
    """The app passes eventlet's tpool.execute as ``run`` and a semaphore as ``lock``."""
    ran, lock = [], threading.Lock()

    def run(function, *args):
        assert lock.locked()  # the write happens under the store's lock
        ran.append(json.loads(args[1])["n"])
        return function(*args)

    kept = FileStore(str(tmp_path / "state.json"), lock=lock, run=run)
    for n in range(3):
        kept.save({"n": n})
    assert ran == [0, 1, 2] and kept.load()["n"] == 2


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    kept = FileStore(str(path))
    kept.save({"n": 1})

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        kept.save({"n": 2})
    monkeypatch.undo()
    assert kept.load()["n"] == 1 and [p.name for p in tmp_path.iterdir()] == ["state.json"]
