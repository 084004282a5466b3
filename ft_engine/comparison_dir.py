"""The comparison folder: what a comparison of methods (compare.py) leaves beside its runs.

    <runs_dir>/.comparisons/<comparison_id>/
        comparison.json   id, times, status, the shared settings, method → run id, the sample
                          prompt and answers, and (once finished) one row of results per method
        table.md          the results as a markdown table, with the sample answers

The folder is hidden and holds no status.json, so `rundir.list_runs` never lists it as a run.
Its runs are ordinary run directories (rundir.py). Like RunDir, ComparisonDir only reads and
writes files: readers (CLI, studio) see a comparison through it and nothing else.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compare_table import collect_rows
from .errors import UserError
from .rundir import (
    _SAFE_ID,
    DamagedFileError,
    Status,
    atomic_write_text,
    new_run_id,
    read_json_object,
    reconcile_dead_owner,
    run_by_id,
    write_owned_json,
)

COMPARISONS_DIR = ".comparisons"  # hidden, and without status.json: never listed as a run
COMPARISON_FILE = "comparison.json"
TABLE_FILE = "table.md"


@dataclass
class ComparisonDir:
    """Reads and writes one comparison folder. Cheap to create; holds no open files."""

    path: Path

    @classmethod
    def create(cls, runs_dir: str | os.PathLike) -> "ComparisonDir":
        """A new, empty comparison folder under runs_dir/.comparisons."""
        root = comparisons_root(runs_dir)
        root.mkdir(parents=True, exist_ok=True)
        cdir = cls(root / new_run_id(root, "compare"))
        cdir.path.mkdir()
        return cdir

    @property
    def comparison_id(self) -> str:
        return self.path.name

    @property
    def runs_dir(self) -> Path:
        return self.path.parent.parent

    def write(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into comparison.json (atomically), claiming it for this process."""
        return write_owned_json(self.path / COMPARISON_FILE, fields, id=self.comparison_id)

    def read(self, reconcile: bool = True) -> dict[str, Any]:
        """comparison.json. With `reconcile`, one whose process died mid-way reads `interrupted`."""
        try:
            info = read_json_object(self.path / COMPARISON_FILE)
        except FileNotFoundError:
            raise UserError(f"{self.path} is not a comparison (no {COMPARISON_FILE}); "
                            f"pick one from the list of comparisons") from None
        if reconcile:
            reconcile_dead_owner(self.path / COMPARISON_FILE, info, current=None,
                                 error="the process running this comparison ended before it finished")
        return info

    def write_table(self, text: str) -> None:
        """table.md: the results as markdown (compare_table.format_table)."""
        atomic_write_text(self.path / TABLE_FILE, text)

    def runs(self) -> dict[str, str]:
        """method → run id, in the order they run."""
        return dict(self.read(reconcile=False)["runs"])

    def rows(self) -> list[dict[str, Any]]:
        """The results: stored once the comparison finished (so they outlive a deleted run),
        read live from the runs while it is going."""
        info = self.read()
        if info.get("rows"):
            return info["rows"]
        return collect_rows(self.runs_dir, info["runs"], info.get("samples") or {})


def progress(cdir: ComparisonDir) -> dict[str, Any]:
    """Where a comparison is: status, which method runs (i of n), and each run's step."""
    info = cdir.read()
    methods = list(info["runs"])
    steps = {}
    for method, run_id in info["runs"].items():
        try:
            s = run_by_id(cdir.runs_dir, run_id).read_status()
            steps[method] = {"status": s.get("status"), "step": s.get("step", 0), "total_steps": s.get("total_steps")}
        except UserError:
            steps[method] = {"status": "deleted", "step": None, "total_steps": None}
    current = info.get("current")
    return {"comparison_id": cdir.comparison_id, "status": info["status"], "current": current,
            "index": methods.index(current) + 1 if current in methods else None, "of": len(methods),
            "runs": info["runs"], "steps": steps, "error": info.get("error"),
            "created_at": info.get("created_at")}


def comparisons_root(runs_dir: str | os.PathLike) -> Path:
    return Path(runs_dir) / COMPARISONS_DIR


def list_comparisons(runs_dir: str | os.PathLike) -> list[ComparisonDir]:
    """Every comparison under runs_dir, oldest first."""
    root = comparisons_root(runs_dir)
    if not root.is_dir():
        return []
    return [ComparisonDir(p) for p in sorted(root.iterdir()) if (p / COMPARISON_FILE).is_file()]


def comparison_by_id(runs_dir: str | os.PathLike, comparison_id: str) -> ComparisonDir:
    """A comparison by id only: never a path, never outside runs_dir/.comparisons."""
    if not isinstance(comparison_id, str) or not _SAFE_ID.fullmatch(comparison_id) or ".." in comparison_id:
        raise UserError(f"{comparison_id!r} is not a comparison id; pick one from the list of comparisons")
    target = comparisons_root(runs_dir).resolve() / comparison_id
    if target.is_symlink() or not (target / COMPARISON_FILE).is_file():
        raise UserError(f"no comparison {comparison_id!r} here; refresh the list of comparisons")
    return ComparisonDir(target)


def delete_comparison(runs_dir: str | os.PathLike, comparison_id: str) -> None:
    """Delete one comparison's folder (its table, results and sample answers). Its runs are
    ordinary runs and stay: delete them one by one if they are not wanted either. Refused
    while the comparison is queued or running: stop it first."""
    cdir = comparison_by_id(runs_dir, comparison_id)
    try:
        status = cdir.read().get("status")
    except DamagedFileError:
        status = None  # no live comparison writes a damaged file (its writes are atomic)
    if status in (Status.QUEUED.value, Status.RUNNING.value):
        raise UserError(f"comparison {comparison_id} is {status}; stop it before deleting it")
    shutil.rmtree(cdir.path)
