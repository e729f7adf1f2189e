"""The tiny model builder, the entropy-server helper, the CLI and import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from qr_vllm.cli import app
from qr_vllm.demo import TinyModelSpec, build_tiny_model
from qr_vllm.demo._entropy_server import EntropyServerProcess
from typer.testing import CliRunner


def test_import_opens_nothing_and_stays_light() -> None:
    code = (
        "import sys, threading; before = threading.active_count(); import qr_vllm; "
        "assert threading.active_count() == before; "
        "print(sorted(m for m in ('torch', 'vllm', 'grpc', 'qr_grpc') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.vllm
def test_processor_module_import_opens_nothing() -> None:
    pytest.importorskip("vllm")
    code = (
        "import threading, socket\n"
        # vLLM's own modules may open sockets at import; only what we add counts.
        "import vllm.v1.sample.logits_processor, vllm.v1.worker.gpu.sample.logits_processor\n"
        "import vllm.v1.sample.ops.penalties, qr_core, qr_entropy\n"
        "opened = []\n"
        "real = socket.socket.__init__\n"
        "def spy(self, *a, **k):\n    opened.append(a)\n    real(self, *a, **k)\n"
        "socket.socket.__init__ = spy\n"
        "import qr_vllm.processor\n"
        "names = [t.name for t in threading.enumerate()]\n"
        "print(len(opened), [n for n in names if n.startswith('qr-')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"


@pytest.mark.torch
@pytest.mark.vllm
def test_tiny_model_is_built_once_and_cached(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    spec = TinyModelSpec(num_layers=1)
    first = build_tiny_model(spec, cache_dir=tmp_path)
    config = json.loads((first / "config.json").read_text())
    assert config["hidden_size"] == 64
    assert config["num_attention_heads"] == 2
    assert (first / "tokenizer.json").is_file()
    assert "chat_template" not in json.loads((first / "tokenizer_config.json").read_text())
    assert build_tiny_model(spec, cache_dir=tmp_path) == first
    assert TinyModelSpec(num_layers=2).digest != spec.digest
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging left behind


def test_entropy_server_helper_starts_and_stops() -> None:
    pytest.importorskip("qr_grpc")
    server = EntropyServerProcess()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.address
    with server:
        assert server.socket_path.exists()
        env = server.environment()
        assert env["QR_GRPC_SERVER_ADDRESS"].startswith("unix:///")
        assert env["QR_GRPC_MODE"] == "bidi_streaming"
        server.kill()
        assert server.process is not None
        assert server.process.poll() is not None
    assert not server.socket_path.parent.exists()


def test_entropy_server_that_cannot_start_says_why() -> None:
    pytest.importorskip("qr_grpc")
    with pytest.raises(RuntimeError, match="did not start"):
        EntropyServerProcess(source="no_such_source", startup_timeout_s=20).start()


def test_cli_config_lists_settings_and_scope(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QR_TOP_K", "9")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert "QR_TOP_K = 9" in result.output
    assert "QR_RECORDS_PATH" in result.output
    assert "supported: >=0.32,<0.33" in result.output
    help_text = CliRunner().invoke(app, ["demo", "--help"]).output
    assert "--max-tokens" in help_text


def test_engine_helpers_restore_the_environment_and_wait_for_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading

    from qr_vllm.demo._engine import closing_engine, environment, read_records

    monkeypatch.setenv("QR_KEEP", "old")
    monkeypatch.delenv("QR_NEW", raising=False)
    with environment({"QR_KEEP": "new", "QR_NEW": "1"}):
        assert (os.environ["QR_KEEP"], os.environ["QR_NEW"]) == ("new", "1")
    assert os.environ["QR_KEEP"] == "old"
    assert "QR_NEW" not in os.environ

    path = tmp_path / "records.jsonl"
    assert read_records(path) == []
    writer = threading.Timer(0.2, lambda: path.write_text('{"a": 1}\n{"a": 2}\n'))
    writer.start()
    assert [r["a"] for r in read_records(path, 2, timeout_s=5)] == [1, 2]  # waited for them
    writer.join()
    assert len(read_records(path, 3, timeout_s=0.1)) == 2  # gives up, returns what is there

    # A stand-in with the one attribute path closing_engine uses on vllm.LLM, to see the
    # shutdown call; real engines go through it in the demo and integration tests.
    class Engine:
        def __init__(self) -> None:
            self.shut = False
            self.llm_engine = self
            self.engine_core = self

        def shutdown(self) -> None:
            self.shut = True

    engine = Engine()
    with closing_engine(engine) as inside:
        assert inside is engine
        assert not engine.shut
    assert engine.shut
