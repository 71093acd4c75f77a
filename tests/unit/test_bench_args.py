"""The benchmarks check their arguments before any work (no root, no Mininet network).

A benchmark runs for many minutes: a ``--docs`` folder that is missing must be created, and one
that cannot hold the plots must stop it at once, not when the plots are saved at the end.
"""

import importlib.util
import os

import pytest

pytest.importorskip("mininet.net")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"{name}_under_test", os.path.join(REPO, "mininet", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCHES = [_load("bench_failover"), _load("bench_voting")]
IDS = ["bench_failover", "bench_voting"]


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.mark.parametrize("bench", BENCHES, ids=IDS)
def test_a_missing_docs_folder_is_created_before_any_work(bench, tmp_path, as_root):
    docs = tmp_path / "not" / "yet"
    args = bench.parse_args(["--docs", str(docs), "--runs", "2"])
    assert (args.docs, args.runs) == (str(docs), 2)
    assert docs.is_dir() and list(docs.iterdir()) == []


@pytest.mark.parametrize("bench", BENCHES, ids=IDS)
def test_a_docs_path_that_is_a_file_stops_at_once(bench, tmp_path, as_root, capsys):
    taken = tmp_path / "plots.png"
    taken.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        bench.parse_args(["--docs", str(taken)])
    assert info.value.code == 2
    assert f"--docs {taken}: exists and is not a folder" in capsys.readouterr().err
    assert taken.read_text() == "not a folder"


@pytest.mark.parametrize("bench", BENCHES, ids=IDS)
def test_a_docs_folder_that_cannot_be_created_stops_at_once(bench, tmp_path, as_root, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as info:
        bench.parse_args(["--docs", str(tmp_path / "file" / "docs")])
    assert info.value.code == 2
    assert "cannot create the folder (Not a directory)" in capsys.readouterr().err


@pytest.mark.parametrize("bench", BENCHES, ids=IDS)
@pytest.mark.parametrize("option", ["--runs", "--rounds", "--wrk-seconds"])
@pytest.mark.parametrize("value, message", [("0", "expected at least 1, got 0"),
                                            ("two", "expected a whole number, got 'two'")])
def test_counts_must_be_positive_whole_numbers(bench, option, value, message, tmp_path,
                                                as_root, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args([option, value, "--docs", str(tmp_path / "docs")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "docs").exists()


@pytest.mark.parametrize("bench", BENCHES, ids=IDS)
def test_without_root_nothing_is_created(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit):
        bench.parse_args(["--docs", str(tmp_path / "docs")])
    assert "needs root (Mininet)" in capsys.readouterr().err
    assert not (tmp_path / "docs").exists()


def test_replot_needs_an_existing_results_file_and_no_root(tmp_path, monkeypatch, capsys):
    bench = BENCHES[0]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit):
        bench.parse_args(["--replot", str(tmp_path / "missing.json")])
    assert f"--replot {tmp_path / 'missing.json'}: no such file" in capsys.readouterr().err
    saved = tmp_path / "bench.json"
    saved.write_text("{}")
    docs = tmp_path / "docs"
    assert bench.parse_args(["--replot", str(saved), "--docs", str(docs)]).replot == str(saved)
    assert docs.is_dir()
