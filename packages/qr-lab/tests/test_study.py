"""Study files: the example is valid; bad files are refused with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest
from _simulate import EXAMPLE, study_file
from qr_lab import StudyError, _admission, load_study
from qr_lab.cli import main


def test_the_example_study_is_valid() -> None:
    study = load_study(EXAMPLE / "intention.toml")
    assert [c.name for c in study.conditions] == ["intention", "control"]
    assert study.design.trials_per_condition == 10
    assert study.design.tokens_per_trial == 16
    assert study.prompts.all()[0] == "The nature of consciousness is"
    assert len(study.prompts.all()) == 3
    assert study.condition("intention").request_args() == {
        "qr_temperature_strategy": "fixed",
        "qr_fixed_temperature": 0.7,
    }


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('predicted = "positive"\n', 'predicted = "positive"\ncolour = "red"\n',
         ["conditions[0] (intention)", "unknown condition key 'colour'"]),
        ("qr_fixed_temperature = 0.7\n\n[[conditions]]",
         "qr_fixed_temperature = 0.7\nqr_top_p = 1.5\n\n[[conditions]]",
         ["conditions[0] (intention)", "qr_top_p=1.5"]),
        ("qr_fixed_temperature = 0.7\n\n[analysis]",
         "qr_fixed_temperature = 0.7\nqr_top_kk = 5\n\n[analysis]",
         ["conditions[1] (control)", "unknown key 'qr_top_kk'", "qr_top_k"]),
        ("qr_fixed_temperature = 0.7\n\n[analysis]",
         "qr_fixed_temperature = 0.7\nqr_session = 'x'\n\n[analysis]",
         ["conditions[1] (control)", "qr_session is set by qr-lab"]),
        ('file = "prompts.txt"', 'file = "missing.txt"', ["prompts.file", "missing.txt"]),
        ("alpha = 0.05", "alpha = 1.5", ["analysis.alpha", "less than 1"]),
        ("alpha = 0.05", "alpha = 0", ["analysis.alpha", "greater than 0"]),
        ('primary = "stouffer_z"', 'primary = "bayes"', ["analysis.primary", "stouffer_z"]),
        ("trials_per_condition = 10", "trials_per_condition = 0", ["design.trials_per_condition"]),
        ('condition = "intention"', 'condition = "nobody"', ["analysis.condition='nobody'"]),
        ('predicted = "positive"\n', "\n", ["one-sided", "predicted"]),
    ],
)  # fmt: skip
def test_bad_study_files_name_the_field(
    tmp_path: Path, old: str, new: str, expected: list[str]
) -> None:
    path = study_file(tmp_path, {old: new})
    with pytest.raises(StudyError) as info:
        load_study(path)
    for text in expected:
        assert text in str(info.value), str(info.value)


def test_engine_refusal_without_qr_vllm_uses_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_admission, "engine_rules", lambda: None)
    path = study_file(
        tmp_path, {"qr_fixed_temperature = 0.7\n": "qr_fixed_temperature = 0.7\nqr_min_p = 1.0\n"}
    )
    with pytest.raises(StudyError, match=r"qr_min_p=1.0 is refused: must be < 1"):
        load_study(path)


def test_a_cross_field_refusal_comes_from_the_engine_rules(tmp_path: Path) -> None:
    pytest.importorskip("qr_vllm._config")
    text = "qr_edt_min_temp = 3.0\nqr_edt_max_temp = 2.0\n"
    path = study_file(
        tmp_path, {"qr_fixed_temperature = 0.7\n": "qr_fixed_temperature = 0.7\n" + text}
    )
    with pytest.raises(StudyError, match="edt_min_temp"):
        load_study(path)


def test_the_key_table_matches_qr_vllm() -> None:
    config = pytest.importorskip("qr_vllm._config")
    named = set(config.PER_REQUEST_FIELDS)
    assert set(_admission.KNOWN_KEYS) - {"source"} == named - {"source"}
    # Every value the table refuses, the engine refuses too (and the edges it accepts, it accepts).
    probes: dict[str, list[object]] = {
        "sample_count": [0, 1024 * 1024 + 1, 2.5, "x"],
        "population_mean": [0.0, 255.0],
        "population_std": [0.0, 128.5],
        "uniform_clamp_epsilon": [0.0, 0.5],
        "fixed_temperature": [-0.1, 100.5],
        "top_k": [-2],
        "top_p": [0.0, 1.01],
        "min_p": [1.0, -0.1],
        "log_level": ["loud"],
        "edt_exponent": [0.0, 10.5],
    }
    defaults = config.QRSamplerConfig.model_construct()
    for key, values in probes.items():
        for value in values:
            assert _admission.KNOWN_KEYS[key].problem(value) is not None, (key, value)
            with pytest.raises(Exception, match=key):
                config.resolve_config(defaults, {f"qr_{key}": value})
    for key, value in [("top_p", 1.0), ("min_p", 0.0), ("top_k", -1), ("sample_count", 1)]:
        assert _admission.KNOWN_KEYS[key].problem(value) is None
        config.resolve_config(defaults, {f"qr_{key}": value})


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE / "intention.toml")]) == 0
    bad = study_file(tmp_path, {"alpha = 0.05": "alpha = 2"})
    assert main(["check", str(bad)]) == 1
    assert "analysis.alpha" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "none.toml")]) == 1
    (tmp_path / "broken.toml").write_text("[study\n")
    assert main(["check", str(tmp_path / "broken.toml")]) == 1
    assert "not valid TOML" in capsys.readouterr().err
