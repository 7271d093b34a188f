"""history / compare / check --against on bad input (issue 23): output paths refused before any
work, damaged records skipped with file:line and the field, never a traceback; the journey in
the repository's commit order; the hint of an empty resource history."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli import cli
from harness import records
from harness.errors import UsageError
from harness.track import history

MISSION = "1,8,512,64"
FILE = "runs-gpu-x.jsonl"


def _invoke(*args):
    return CliRunner().invoke(cli, list(args))


def _one_line_error(r, *words):
    """Exit 2, one line on stderr, no traceback."""
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("flashcore: error:"), err
    for w in words:
        assert w in err[0], err[0]


def _rec(n, kind="run", **kw):
    """A record of the mission shape at commit n (a fake full hash), record date 2026-01-0n."""
    base = dict(schema=1, kind=kind, run_id=f"{kind}{n}", mode="full", shape_label=MISSION, causal=False, bugs=[],
                inputs="randn", git_commit=f"{n}" * 40, git_subject=f"commit {n}",
                git_commit_date=f"2026-01-0{n}T00:00:00", time=f"2026-01-0{n}T00:00:00", device="GPU X")
    if kind == "run":
        base.update(max_err=n * 1e-4, err_floor=float(n), resources={"registers": 100 + n})
    else:
        base.update(latency={"kernel": {"median_us": 10.0 * n}, "tflops": 1.0,
                             "sdpa": {"sdpa_flash": {"median_us": 12.0}}}, resources={"registers": 100 + n})
    base.update(kw)
    return base


def _write(results_dir, lines):
    """Lines as given: dicts are dumped (Infinity/NaN as Python's json writes them), strings kept."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / FILE
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


def _good(results_dir, extra=()):
    """Commits 1, 2, 3 (run and bench each), with the extra lines at lines 7, 8, ..."""
    return _write(results_dir, [_rec(n, k) for n in (1, 2, 3) for k in ("run", "bench")] + list(extra))


# ------------------------------------------------------------------ output paths, before any work
@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if history reads a single record: the path must be refused before."""
    def boom(*a, **k):
        raise AssertionError("history started work before checking --png")
    monkeypatch.setattr(history, "journey", boom)


def test_png_in_a_missing_directory_is_one_line(results_tmp, no_work, tmp_path):
    _one_line_error(_invoke("history", "--png", str(tmp_path / "nonexistent" / "dir" / "h.png")),
                    "--png", "no directory")


@pytest.mark.parametrize("name, why", [("h.txt", ".txt is not a format"), ("h", "no extension"),
                                       ("h.png.bak", ".bak is not a format")])
def test_png_of_a_format_matplotlib_does_not_write_is_one_line(results_tmp, no_work, tmp_path, name, why):
    pytest.importorskip("matplotlib")
    _one_line_error(_invoke("history", "--metric", "vs_flash", "--png", str(tmp_path / name)), why, ".png", ".svg")


def test_check_png_path_uses_matplotlibs_own_list(tmp_path):
    backend_bases = pytest.importorskip("matplotlib.backend_bases")
    for ext in backend_bases.FigureCanvasBase.get_supported_filetypes():
        assert history.check_png_path(tmp_path / f"h.{ext}") == tmp_path / f"h.{ext}"
    history.check_png_path(tmp_path / "h.PNG")         # savefig lowers the extension too
    history.check_png_path("h.png")                     # the working directory
    with pytest.raises(UsageError, match="is a directory"):
        (tmp_path / "d.png").mkdir()
        history.check_png_path(tmp_path / "d.png")
    with pytest.raises(UsageError, match="^--out .*no directory"):
        history.check_png_path(tmp_path / "missing" / "h.png", option="--out")


def test_png_in_a_read_only_directory_is_one_line(results_tmp, no_work, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:       # root writes anywhere: the permission answer is what is under test
        monkeypatch.setattr(records.os, "access", lambda path, mode: False)
    try:
        _one_line_error(_invoke("history", "--png", str(ro / "h.png")), "not writable")
    finally:
        ro.chmod(0o700)


def test_png_without_matplotlib_names_the_extra(results_tmp, no_work, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backend_bases", None)    # import fails: ImportError
    _one_line_error(_invoke("history", "--png", str(tmp_path / "h.png")), "needs matplotlib", "flashcore[plot]")


def test_png_is_written_where_the_path_is_good(results_tmp, tmp_path):
    pytest.importorskip("matplotlib")
    _good(results_tmp)
    out = tmp_path / "h.svg"
    r = _invoke("history", "--metric", "vs_flash", "--png", str(out))
    assert r.exit_code == 0 and out.stat().st_size > 0, r.output


# ------------------------------------------------------------------ damaged records
DAMAGED = [   # (line, what the warning must name)
    (_rec(4, time=5), "field time is 5, not str"),
    (_rec(4, time=None), "field time is null, not str"),
    (_rec(4, git_commit=123), "field git_commit is 123, not str or null"),
    (_rec(4, kind=["run"]), "field kind"),
    (_rec(4, causal="yes"), "field causal"),
    (_rec(4, bugs=[1]), "field bugs"),
    (_rec(4, git_commit_date=20260104), "field git_commit_date"),
    (_rec(4, schema=True), "schema True is not 1"),
    ("[1, 2]", "schema ? is not 1"),
    (_rec(4, max_err="abc"), 'field max_err is "abc", not a number'),
    (_rec(4, max_err=[1]), "field max_err is [1], not a number"),
    (_rec(4, max_err=True), "field max_err is true, not a number"),
]


@pytest.mark.parametrize("line, why", DAMAGED, ids=[w.split(",")[0] for _, w in DAMAGED])
def test_a_damaged_record_is_skipped_naming_file_line_and_field(results_tmp, line, why):
    _good(results_tmp, [line])                      # the damaged line is line 7
    r = _invoke("history", "--metric", "max_err")
    assert r.exit_code == 0 and r.exception is None, r.output
    assert f"flashcore: warning: skipped damaged record {FILE}:7: " in r.stderr and why in r.stderr, r.stderr
    assert "(3 commits)" in r.stdout and "commit 3" in r.stdout and "4444" not in r.stdout
    r = _invoke("compare", "run1", "run3")          # compare reads the rest too
    assert r.exit_code == 0 and "max_err" in r.stdout, r.output
    if "not a number" not in why:                   # a line read() skips; a metric field only where compared
        assert f"{FILE}:7: " in r.stderr


def test_a_damaged_latency_object_is_named(results_tmp):
    _good(results_tmp, [_rec(4, "bench", latency="abc"), _rec(5, "bench", latency={"kernel": {"median_us": "x"}})])
    r = _invoke("history", "--metric", "latency")
    assert r.exit_code == 0 and "(3 commits)" in r.stdout, r.output
    assert f"{FILE}:7: field latency.kernel.median_us has the wrong type" in r.stderr
    assert f'{FILE}:8: field latency.kernel.median_us is "x", not a number' in r.stderr


def test_compare_shows_a_damaged_metric_as_missing(results_tmp):
    _good(results_tmp, [_rec(4, max_err="abc")])
    r = _invoke("compare", "run1", "run4")
    assert r.exit_code == 0 and f"{FILE}:7: field max_err" in r.stderr, r.output
    row = [line for line in r.stdout.splitlines() if " max_err " in line][0]
    assert "-" in row and "0.0001" in row


def test_a_directory_named_like_a_record_file_is_reported_and_skipped(results_tmp):
    _good(results_tmp)
    (results_tmp / "runs-x.jsonl").mkdir()
    rr = records.read()
    assert len(rr.records) == 6 and rr.damaged == ["runs-x.jsonl: IsADirectoryError: Is a directory"]
    r = _invoke("history")
    assert r.exit_code == 0 and "runs-x.jsonl: IsADirectoryError" in r.stderr and "(3 commits)" in r.stdout, r.output
    assert _invoke("compare", "run1", "run2").exit_code == 0


@pytest.mark.parametrize("value, shown", [(float("inf"), "inf"), (float("nan"), "nan")])
def test_non_finite_metric_is_shown_not_a_crash(results_tmp, tmp_path, value, shown):
    """A kernel that blew up records max_err Infinity or NaN: a result, shown with a red '!'."""
    _good(results_tmp, [_rec(4, max_err=value)])
    assert "Infinity" in (results_tmp / FILE).read_text() or "NaN" in (results_tmp / FILE).read_text()
    r = _invoke("history", "--metric", "max_err")
    assert r.exit_code == 0 and r.exception is None, r.output
    row = [line for line in r.stdout.splitlines() if "4444444" in line][0]
    assert shown in row and "!" in row and not r.stderr
    # the finite bars still scale to the finite values: commit 3 has the longest bar
    assert "█" * 24 in [line for line in r.stdout.splitlines() if "3333333" in line][0]
    assert _invoke("compare", "run3", "run4").exit_code == 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert _invoke("history", "--png", str(tmp_path / "h.png")).exit_code == 0     # plotted too


def test_check_against_a_damaged_file_does_not_traceback(results_tmp, tmp_path):
    base = dict(schema=1, kind="run", mode="full", shape_label=MISSION, resources={"registers": 50})
    as_list = tmp_path / "base.json"
    as_list.write_text(json.dumps([7, dict(base, time=5), base]))
    r = _invoke("check", "--against", str(as_list))
    assert r.exit_code == 1 and "vs baseline 50" in r.stdout, r.output
    assert "base.json:item 1: a JSON int" in r.stderr and "base.json:item 2: field time is 5" in r.stderr
    as_lines = tmp_path / "base.jsonl"
    as_lines.write_text(json.dumps(dict(base, git_commit=123)) + "\nnot json\n" + json.dumps(base) + "\n")
    r = _invoke("check", "--against", str(as_lines))
    assert r.exit_code == 1 and "vs baseline 50" in r.stdout, r.output
    assert "base.jsonl:1: field git_commit" in r.stderr and "base.jsonl:2: JSONDecodeError" in r.stderr
    binary = tmp_path / "base.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    r = _invoke("check", "--against", str(binary), "--no-spills")
    assert r.exit_code not in (0, 1) and isinstance(r.exception, SystemExit), r.output    # undecided
    assert "no records" in r.stdout and "base.bin:1: UnicodeDecodeError" in r.stderr and "Traceback" not in r.output
    _good(results_tmp, [_rec(4, time=None)])         # a revision: read through results/
    r = _invoke("check", "--against", "1" * 12, "--no-spills")
    assert "Traceback" not in r.output and f"{FILE}:7: field time" in r.stderr, r.output


# ------------------------------------------------------------------ the order of the journey
def _git(repo, *args, date=None):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    if date:
        env.update(GIT_COMMITTER_DATE=date, GIT_AUTHOR_DATE=date)
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """Commits A, B, C, in that order by commit time; C's date string sorts before B's (its
    offset puts it later in UTC) and the records below hold misleading dates and subjects."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    shas = {}
    for name, date in [("A", "2026-01-01T10:00:00+00:00"), ("B", "2026-01-01T20:00:00+05:00"),
                       ("C", "2026-01-01T18:00:00+00:00")]:
        (repo / "f").write_text(name)
        _git(repo, "add", "f")
        _git(repo, "commit", "-q", "-m", f"git subject {name}", date=date)
        shas[name] = _git(repo, "rev-parse", "HEAD")
    return repo, shas


def _journey_records(results_dir, shas):
    A, B, C = shas["A"], shas["B"], shas["C"]
    lines = [   # (commit as recorded, record git_commit_date, record time)
        _rec(1, git_commit=C[:7], git_commit_date="2026-01-01", time="2026-01-01T00:00:01", git_subject="stale C"),
        _rec(2, git_commit=A, git_commit_date="2026-01-09T00:00:00", time="2026-01-09T00:00:00", git_subject="stale A"),
        _rec(3, git_commit=B[:7], git_commit_date="2026-01-01", time="2026-01-01T00:00:00"),
        _rec(4, git_commit="d" * 40, git_commit_date="2025-01-01T00:00:00", time="2025-01-01T00:00:00"),
        _rec(5, git_commit="e" * 7, git_commit_date="2024-01-01", time="2024-01-01T00:00:00"),
        _rec(6, git_commit="not-a-hash", git_commit_date="2026-12-01", time="2026-12-01T00:00:00"),
        _rec(7, git_commit=C, time="2026-01-02T00:00:00"),       # the same commit by its full hash: one row
    ]
    return _write(results_dir, lines)


def test_git_commits_resolves_short_hashes_and_skips_unknown_ones(repo, tmp_path):
    repo, shas = repo
    got = history.git_commits([shas["A"], shas["B"][:7], "d" * 40, "e" * 7, "not-a-hash", "--all", None], repo)
    assert set(got) == {shas["A"], shas["B"][:7]}
    assert got[shas["B"][:7]].commit == shas["B"] and got[shas["B"][:7]].subject == "git subject B"
    assert got[shas["B"][:7]].date == "2026-01-01T20:00:00+05:00"
    assert got[shas["A"]].time < got[shas["B"][:7]].time
    assert history.git_commits([shas["A"]], tmp_path / "missing") == {}      # no repository there
    (tmp_path / "plain").mkdir()
    assert history.git_commits([shas["A"]], tmp_path / "plain") == {}        # not a git repository
    assert history.git_commits([], repo) == {}


def test_history_is_in_the_repositorys_commit_order(results_tmp, repo, monkeypatch):
    repo, shas = repo
    _journey_records(results_tmp, shas)
    pts, damaged = history.journey("max_err", "full", MISSION, repo=repo)
    assert not damaged
    # git's order for the commits it knows, whatever the records say; then the unknown ones by record date
    assert [p.commit for p in pts] == [shas["A"], shas["B"], shas["C"], "e" * 7, "d" * 40, "not-a-hash"]
    assert [p.subject for p in pts[:3]] == ["git subject A", "git subject B", "git subject C"]
    assert pts[1].date == "2026-01-01T20:00:00+05:00" and pts[3].date == "2024-01-01"
    assert pts[2].n_records == 2 and pts[2].value == pytest.approx(7e-4)        # the newest record of C, by either hash
    monkeypatch.setattr(records, "REPO_ROOT", repo)               # the CLI resolves through records.REPO_ROOT
    r = _invoke("history", "--metric", "max_err")
    assert r.exit_code == 0, r.output
    rows = [line for line in r.stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows][:3] == [shas["A"], shas["B"], shas["C"]]
    assert "git subject C" in rows[2] and "stale" not in r.stdout and "2026-01-01T18:00:00+00:00" in rows[2]


def test_compare_finds_records_holding_the_short_hash(results_tmp, repo, monkeypatch):
    repo, shas = repo
    _journey_records(results_tmp, shas)
    monkeypatch.setattr(records, "REPO_ROOT", repo)
    rows = history.compare(shas["B"], shas["A"][:10])              # B's records hold B[:7]
    assert [row[2:4] for row in rows if row[1] == "max_err"] == [(pytest.approx(3e-4), pytest.approx(2e-4))]


def test_history_without_git_keeps_the_record_order(results_tmp, tmp_path, monkeypatch):
    _good(results_tmp)
    monkeypatch.setattr(records, "REPO_ROOT", tmp_path / "no-repo")
    pts, _ = history.journey("max_err", "full", MISSION)
    assert [p.commit[0] for p in pts] == ["1", "2", "3"]


# ------------------------------------------------------------------ an empty resource history
@pytest.mark.parametrize("metric, hint", [("spills", "only `flashcore compile --record` records spills"),
                                          ("regs", "regs is read from run, bench or compile records"),
                                          ("smem", "smem is read from run, bench or compile records")])
def test_an_empty_resource_history_says_which_records_carry_it(results_tmp, metric, hint):
    r = _invoke("history", "--metric", metric)
    assert r.exit_code == 0 and "no records" in r.stdout and hint in r.stdout, r.output
