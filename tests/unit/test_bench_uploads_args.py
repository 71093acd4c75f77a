"""mininet/bench_uploads.py checks its arguments before any work (no root, no network)."""

import importlib.util
import os

import pytest

pytest.importorskip("mininet.net")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load():
    spec = importlib.util.spec_from_file_location(
        "bench_uploads_under_test", os.path.join(REPO, "mininet", "bench_uploads.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _load()


def test_counts_are_whole_numbers_of_at_least_one(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    args = BENCH.parse_args(["--uploads", "3", "--faults", "2", "--only", "outcomes"])
    assert (args.uploads, args.faults, args.only) == (3, 2, ["outcomes"])
    for bad in (["--faults", "0"], ["--uploads", "x"], ["--only", "everything"]):
        with pytest.raises(SystemExit):
            BENCH.parse_args(bad)


def test_it_refuses_to_start_without_root(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit):
        BENCH.parse_args([])
    assert "needs root" in capsys.readouterr().err


def test_the_outcome_table_counts_each_kind():
    runs = [{"fault": "crash", "outcome": "ok", "right": True, "primary": "lb3",
             "had_all": True, "reset_after_promotion_s": None},
            {"fault": "crash", "outcome": "reset", "right": True, "primary": "lb2",
             "had_all": False, "reset_after_promotion_s": 0.31},
            {"fault": "crash", "outcome": "hang", "right": True, "primary": "lb3",
             "had_all": True, "reset_after_promotion_s": None}]
    table = BENCH.report_outcomes(runs)
    assert "| crash | 3 | 1 | 1 (0.31 s) | 1 | lb2 1, lb3 2 | 2 |" in table
