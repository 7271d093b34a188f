"""Run records: concurrent appends, damaged lines, history/compare on fixtures, check exit codes."""

import json
import multiprocessing as mp

from click.testing import CliRunner

from cli import cli
from harness.track import history
from harness import records
from tests.conftest import gpu_missing_reason


def _writer(path, tag, n):
    for i in range(n):
        records.append({"schema": records.SCHEMA_VERSION, "kind": "run", "tag": tag, "i": i, "pad": "x" * 3000}, path)


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    path = tmp_path / "runs-x.jsonl"
    ps = [mp.get_context("spawn").Process(target=_writer, args=(path, t, 200)) for t in "ab"]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    rr = records.read([path])
    assert not rr.damaged
    assert sorted((r.tag, r.i) for r in rr.records) == sorted((t, i) for t in "ab" for i in range(200))


def test_truncated_last_line_is_reported_and_the_rest_kept(tmp_path):
    path = tmp_path / "runs-x.jsonl"
    for i in range(3):
        records.append({"schema": 1, "kind": "run", "i": i}, path)
    with open(path, "ab") as f:
        f.write(b'{"schema": 1, "kind": "run", "i": 3, "met')     # a writer killed mid-line
    rr = records.read([path])
    assert [r.i for r in rr.records] == [0, 1, 2] and len(rr.damaged) == 1 and ":4:" in rr.damaged[0]
    records.append({"schema": 1, "kind": "run", "i": 4}, path)         # the next append is not swallowed
    rr = records.read([path])
    assert [r.i for r in rr.records] == [0, 1, 2, 4] and len(rr.damaged) == 1


def test_wrong_schema_is_skipped(tmp_path):
    path = tmp_path / "runs-x.jsonl"
    path.write_text(json.dumps({"schema": 99}) + "\n" + json.dumps({"schema": 1, "kind": "run"}) + "\n")
    rr = records.read([path])
    assert len(rr.records) == 1 and "schema 99" in rr.damaged[0]


def _fixture(results_dir):
    """Three commits of the mission shape: max_err 1e-4, 1e-4, 5e-2; latency 10, 11, 20 us."""
    rows = []
    for n, (c, err, lat, regs) in enumerate([("a" * 40, 1e-4, 10.0, 120), ("b" * 40, 1.1e-4, 11.0, 120),
                                             ("c" * 40, 5e-2, 20.0, 140)]):
        base = dict(schema=1, mode="full", shape_label="1,8,512,64", causal=False, bugs=[], inputs="randn",
                    git_commit=c, git_subject=f"commit {n}", git_commit_date=f"2026-01-0{n + 1}T00:00:00",
                    time=f"2026-01-0{n + 1}T00:00:00", device="GPU X")
        rows.append(dict(base, kind="run", run_id=f"run{n}", max_err=err, err_floor=err / 1e-4,
                         resources={"registers": regs}))
        rows.append(dict(base, kind="bench", run_id=f"bench{n}", resources={"registers": regs},
                         latency={"kernel": {"median_us": lat}, "tflops": 1.0, "sdpa": {"sdpa_flash": {"median_us": 12.0}}}))
    rows.append(dict(rows[-1], causal=True, run_id="bench-causal", latency={"kernel": {"median_us": 99.0}}))
    results_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:
        records.append(r, results_dir / "runs-gpu-x.jsonl")


def test_history_journey_and_command(results_tmp):
    _fixture(results_tmp)
    pts, damaged = history.journey("max_err", "full", "1,8,512,64")
    assert [p.commit[0] for p in pts] == ["a", "b", "c"] and pts[-1].value == 5e-2 and not damaged
    pts, _ = history.journey("latency", "full", "1,8,512,64", causal=False)
    assert [p.value for p in pts] == [10.0, 11.0, 20.0]           # the causal run is its own case
    pts, _ = history.journey("latency", "full", "1,8,512,64", causal=True)
    assert [p.value for p in pts] == [99.0]
    pts, _ = history.journey("vs_flash", "full", "1,8,512,64", causal=False)
    assert [round(p.value, 3) for p in pts] == [1.2, round(12 / 11, 3), 0.6]   # SDPA time / kernel time
    r = CliRunner().invoke(cli, ["history", "--mode", "full", "--shape", "mission", "--metric", "latency"])
    assert r.exit_code == 0 and "commit 2" in r.output and "20" in r.output


def test_compare_commits_and_run_ids(results_tmp):
    _fixture(results_tmp)
    rows = history.compare("a" * 8, "c" * 8)
    lat = [row for row in rows if row[1] == "latency"][0]
    assert lat[2] == 10.0 and lat[3] == 20.0 and abs(lat[4] - 100.0) < 1e-9
    rows = history.compare("run0", "run2")
    assert any(row[1] == "max_err" and row[3] == 5e-2 for row in rows)
    r = CliRunner().invoke(cli, ["compare", "run0", "nope"])
    assert r.exit_code == 2 and "no records for 'nope'" in r.output


def test_check_exit_codes(results_tmp, tmp_path):
    run = lambda *a: CliRunner().invoke(cli, ["check", *a])   # noqa: E731
    assert run("--no-spills").exit_code == 0
    r = run("--max-regs", "10")
    assert r.exit_code == 1 and "REGRESSED" in r.output and "limit 10" in r.output
    if gpu_missing_reason():
        r = run("--max-error", "1e-3")
        assert r.exit_code == 125 and "UNDECIDED" in r.output     # git bisect run: skip
    r = run("--against", "deadbeef", "--no-spills")
    assert r.exit_code == 125 and "no records" in r.output
    for bad in (["--max-regs", "-5"], ["--max-regs", "0"], ["--max-error", "-1"], ["--max-slowdown", "-3"]):
        r = run(*bad)
        assert r.exit_code == 2 and r.output.startswith("flashcore: error:") and len(r.output.splitlines()) == 1, bad
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"schema": 1, "kind": "run", "mode": "full", "shape_label": "1,8,512,64",
                                "resources": {"registers": 50}}))
    r = run("--against", str(base))
    assert r.exit_code == 1 and "vs baseline 50" in r.output


def test_compare_pairs_one_kernels_records(results_tmp):
    """Two kernels' records at the same commits and shape: compare pairs each kernel with itself."""
    _fixture(results_tmp)
    for n, c in enumerate(("a" * 40, "c" * 40)):
        records.append(dict(schema=1, kind="run", run_id=f"hop{n}", kernel="flashcore_hopper", mode="full",
                            shape_label="1,8,512,64", causal=False, bugs=[], inputs="randn", git_commit=c,
                            time=f"2026-01-0{n + 1}T00:00:00", device="GPU X", max_err=[7e-4, 9e-4][n]),
                       results_tmp / "runs-gpu-x.jsonl")
    fused = [r for r in history.compare("a" * 8, "c" * 8) if r[0].startswith("run") and r[1] == "max_err"]
    assert fused and fused[0][2:4] == (1e-4, 5e-2)
    hop = [r for r in history.compare("a" * 8, "c" * 8, kernel="flashcore_hopper") if r[1] == "max_err"]
    assert hop and hop[0][2:4] == (7e-4, 9e-4)
    r = CliRunner().invoke(cli, ["compare", "a" * 8, "c" * 8, "--kernel", "flashcore_hopper"])
    assert r.exit_code == 0 and ("9.00e-04" in r.output or "0.0009" in r.output), r.output
