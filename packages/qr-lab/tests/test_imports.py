"""qr-lab runs on a laptop: importing it (and analyzing) pulls in no engine."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from _simulate import simulate_run, study_file
from qr_lab import RunError
from qr_lab._embedded import tiny_model_builder
from qr_lab.cli import main

_ENGINE = ("torch", "vllm", "grpc", "qr_vllm", "qr_grpc", "transformers")


def test_importing_and_analyzing_loads_no_engine_module(tmp_path: Path) -> None:
    run = simulate_run(study_file(tmp_path), tmp_path / "run", seed=1)
    code = (
        "import sys\n"
        "from qr_lab.cli import main\n"
        f"assert main(['analyze', {str(run)!r}, '--no-calibration']) == 0\n"
        f"assert main(['report', {str(run)!r}]) == 0\n"
        f"loaded = [m for m in {_ENGINE!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "report.html").exists()


def test_the_tiny_model_builder_is_found_where_qr_vllm_keeps_it() -> None:
    if importlib.util.find_spec("qr_vllm") is None:
        with pytest.raises(RunError, match="needs qr-vllm and vLLM"):
            tiny_model_builder()
    else:
        assert tiny_model_builder().__name__ == "build_tiny_model"


def test_embedded_without_vllm_says_what_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the embedded engine would start")
    study = study_file(tmp_path)
    assert main(["register", str(study)]) == 0
    assert main(["run", str(study), "--embedded", "--run-dir", str(tmp_path / "run")]) == 1
    assert "needs qr-vllm and vLLM" in capsys.readouterr().err
