"""Registration freezes a study; an edited study is refused, naming what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _simulate import study_file
from qr_lab import RegistrationError, load_study
from qr_lab._register import check_registered, register, registration_path
from qr_lab._runner import RunOptions, run_study
from qr_lab.cli import main


def test_register_freezes_hash_time_and_versions(tmp_path: Path) -> None:
    path = study_file(tmp_path)
    entry = register(path, load_study(path))
    assert len(entry["hash"]) == 64
    assert entry["versions"]["qr-lab"] == "0.1.0"
    assert entry["registered_at"].endswith("Z")
    # Registering the unchanged study again changes nothing.
    assert register(path, load_study(path))["hash"] == entry["hash"]
    assert len(json.loads(registration_path(path).read_text())["registrations"]) == 1
    assert check_registered(path, load_study(path))["hash"] == entry["hash"]


def test_an_edited_study_is_refused_naming_what_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = study_file(tmp_path)
    assert main(["register", str(path)]) == 0
    first = json.loads(capsys.readouterr().out)["hash"]
    path.write_text(
        path.read_text()
        .replace("trials_per_condition = 10", "trials_per_condition = 12")
        .replace("alpha = 0.05", "alpha = 0.1")
    )
    (tmp_path / "prompts.txt").write_text("Once upon a time\nA different prompt\n")
    # Running is refused before anything is sent (the endpoint is never contacted).
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "changed after its registration" in err
    assert "design.trials_per_condition: 10 -> 12" in err
    assert "analysis.alpha: 0.05 -> 0.1" in err
    assert 'prompts.all[2]: "A random number is" -> "A different prompt"' in err
    assert "qr-lab register --new" in err
    assert not (tmp_path / "run").exists()
    # Registering again is refused too, unless a new registration is asked for.
    with pytest.raises(RegistrationError, match="trials_per_condition"):
        register(path, load_study(path))
    assert main(["register", "--new", str(path)]) == 0
    second = json.loads(capsys.readouterr().out)["hash"]
    assert second != first
    history = json.loads(registration_path(path).read_text())["registrations"]
    assert [h["hash"] for h in history] == [first, second]
    assert history[1]["supersedes"] == first
    assert check_registered(path, load_study(path))["hash"] == second


def test_an_unregistered_study_is_not_run(tmp_path: Path) -> None:
    path = study_file(tmp_path)
    with pytest.raises(RegistrationError, match="not registered"):
        run_study(path, RunOptions(run_dir=tmp_path / "run", progress=False))


def test_a_run_directory_keeps_to_its_registration(tmp_path: Path) -> None:
    from _simulate import simulate_run

    path = study_file(tmp_path)
    run = simulate_run(path, tmp_path / "run", seed=3)
    path.write_text(path.read_text().replace("seed = 20261202", "seed = 7"))
    register(path, load_study(path), new=True)
    with pytest.raises(Exception, match="belongs to registration"):
        run_study(path, RunOptions(run_dir=run, progress=False))
