"""The commands that read a run directory, run on one method's output (imported by the method tests)."""

from __future__ import annotations

from pathlib import Path


def exercise_run_dir_commands(run_dir: Path, photo: Path, requisite: str, tmp_path: Path) -> None:
    """``evaluate``, ``analyze``, ``check`` (a verdict for ``requisite``) and ``export`` all succeed."""
    from icao_mtl import analyze, check, evaluate, export

    assert evaluate.main([str(run_dir), "--quiet", "--out", str(tmp_path / "eval")]) == 0
    assert analyze.main([str(run_dir), "--requisite", requisite, "--n", "2"]) == 0
    assert check.main([str(run_dir), str(photo), "--json", str(tmp_path / "check.json")]) in (0, 1)
    assert requisite in (tmp_path / "check.json").read_text()
    assert export.main([str(run_dir), "--format", "savedmodel", "--out", str(tmp_path / "sm")]) == 0
