"""A run or comparison folder whose status file was damaged outside the program (a hand edit,
a disk error: our own writes are atomic) must not take the others down: it is listed as
`damaged` with the file named and the fix, can be deleted, and refuses to resume with the
same message; the runs next to it are listed, chattable and untouched."""

from __future__ import annotations

import json
import shutil

import pytest

from ft_engine.cli import main
from ft_engine.compare import ComparisonDir, comparisons_root, delete_comparison
from ft_engine.config import RunConfig
from ft_engine.errors import UserError
from ft_engine.rundir import DamagedFileError, delete_run, list_runs, run_by_id, summarize
from ft_engine.training import resume_job, train

DAMAGE = {
    "truncated": b'{"status": "stopped", "step": 3',
    "binary": b"\x00\xff\xfe garbage \x89PNG",
    "a list": b"[1, 2, 3]",
    "empty": b"",
}


@pytest.fixture(scope="module")
def good_run(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("damaged")
    data = d / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(8)))
    run, status = train(RunConfig(model=tiny_model, data=str(data), runs_dir=str(d / "source"), max_steps=2,
                                  batch_size=2, max_seq_len=32, checkpoint_steps=1))
    assert status.value == "completed"
    return run


@pytest.fixture(params=list(DAMAGE))
def runs_with_one_damaged(request, good_run, tmp_path):
    """A runs folder with two copies of a finished run; the second one's status.json damaged."""
    runs = tmp_path / "runs"
    good = shutil.copytree(good_run.path, runs / "20260101-000000-good-0000")
    bad = shutil.copytree(good_run.path, runs / "20260101-000001-bad-0000")
    (bad / "status.json").write_bytes(DAMAGE[request.param])
    snapshot = {p.relative_to(runs): p.read_bytes() for p in good.rglob("*") if p.is_file()}
    return runs, good.name, bad.name, snapshot


def _untouched(runs, snapshot) -> bool:
    return {p: (runs / p).read_bytes() for p in snapshot} == snapshot


def test_a_damaged_run_is_listed_as_damaged_and_the_others_as_before(runs_with_one_damaged):
    runs, good, bad, snapshot = runs_with_one_damaged
    rows = {r.run_id: summarize(r) for r in list_runs(runs)}
    assert rows[good]["status"] == "completed" and rows[good]["step"] == 2
    assert rows[bad]["status"] == "damaged"
    assert f"{bad}/status.json is damaged" in rows[bad]["error"] and "delete" in rows[bad]["error"]
    with pytest.raises(DamagedFileError, match="restore the file from a backup"):
        run_by_id(runs, bad).read_status()
    assert _untouched(runs, snapshot)


def test_the_cli_lists_both_and_exits_0(runs_with_one_damaged, capsys):
    runs, good, bad, _ = runs_with_one_damaged
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    good_line = next(line for line in out.splitlines() if line.startswith(good))
    bad_line = next(line for line in out.splitlines() if line.startswith(bad))
    assert "completed" in good_line and "2/2" in good_line
    assert "damaged" in bad_line and "status.json is damaged" in bad_line


def test_resume_of_a_damaged_run_names_the_file_and_writes_nothing(runs_with_one_damaged):
    runs, _, bad, _ = runs_with_one_damaged
    before = {p: p.read_bytes() for p in (runs / bad).rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"status\.json is damaged"):
        resume_job(run_by_id(runs, bad))
    assert {p: p.read_bytes() for p in (runs / bad).rglob("*") if p.is_file()} == before


def test_a_damaged_run_can_be_deleted_and_only_it(runs_with_one_damaged):
    runs, good, bad, snapshot = runs_with_one_damaged
    delete_run(runs, bad)
    assert [r.run_id for r in list_runs(runs)] == [good]
    assert _untouched(runs, snapshot)


def test_the_studio_lists_deletes_and_skips_it_in_chat(runs_with_one_damaged):
    from ui.chat_tab import chattable_runs
    from ui.context import Studio
    from ui.monitor_tab import run_report
    from ui.runs_tab import table_rows
    runs, good, bad, snapshot = runs_with_one_damaged
    studio = Studio(runs)
    rows = {row[-1]: row for row in table_rows(studio)}
    assert rows[good][3] == "completed" and rows[bad][3] == "damaged"
    assert chattable_runs(studio) == [good]
    with pytest.raises(UserError, match="status.json is damaged"):
        run_report(studio, bad)  # the Monitor shows this message in place of the run
    assert run_report(studio, good)["status"] == "completed"
    assert _untouched(runs, snapshot)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_comparison_is_listed_and_deletable(damage, tmp_path, capsys):
    from ui.compare_view import comparison_choices, comparison_report
    from ui.context import Studio
    runs = tmp_path / "runs"
    ok = ComparisonDir(comparisons_root(runs) / "20260101-000000-cmp-0000")
    ok.path.mkdir(parents=True)
    ok.write(status="completed", runs={"lora": "r1"}, settings={"base": {"max_steps": 3}}, rows=[])
    bad = comparisons_root(runs) / "20260101-000001-cmp-0000"
    bad.mkdir()
    (bad / "comparison.json").write_bytes(DAMAGE[damage])
    studio = Studio(runs)
    assert comparison_choices(studio) == [(f"{bad.name} · damaged", bad.name),
                                          (f"{ok.comparison_id} · lora · 3 steps · completed", ok.comparison_id)]
    with pytest.raises(UserError, match="comparison.json is damaged"):
        comparison_report(studio, bad.name)
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith(bad.name) and "damaged" in line for line in out.splitlines()), out
    assert any(line.startswith(ok.comparison_id) and "lora=r1" in line for line in out.splitlines()), out
    delete_comparison(runs, bad.name)
    assert not bad.exists() and ok.read()["status"] == "completed"
