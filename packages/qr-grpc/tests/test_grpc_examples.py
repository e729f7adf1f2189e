"""Every example server runs as is, answers every client mode and stops on SIGTERM."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_helpers import MODES, ServerProcess
from qr_entropy import HealthStatus
from qr_grpc import QuantumGrpcSource

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "servers"
SpawnProcess = Callable[..., ServerProcess]
MakeClient = Callable[..., QuantumGrpcSource]


@pytest.mark.parametrize(
    ("script", "device_id", "n"),
    [
        ("simple_urandom_server.py", "os.urandom", 20_480),
        ("timing_noise_server.py", "timing_noise", 512),
        ("qrng_template_server.py", "template:/dev/qrng0", 20_480),
    ],
)
def test_example_server(
    script: str,
    device_id: str,
    n: int,
    *,
    short_tmp: Path,
    spawn_process: SpawnProcess,
    make_client: MakeClient,
) -> None:
    path = EXAMPLES / script
    assert path.is_file()
    server = spawn_process(
        [sys.executable, str(path), "--address", f"unix://{short_tmp / 'example.sock'}"]
    )
    for mode in MODES:
        client = make_client(server.address, grpc_mode=mode, grpc_timeout_ms=20_000)
        block = client.fetch_block(2, n // 2)
        assert block.data.shape == (2, n // 2)
        assert block.provenance.device_id == device_id
        assert block.provenance.health is HealthStatus.OK
        client.close()  # an open bidi stream would hold the graceful stop for its grace period
    assert server.terminate() == 0


def test_template_server_key_and_health(
    short_tmp: Path, spawn_process: SpawnProcess, make_client: MakeClient
) -> None:
    server = spawn_process(
        [
            sys.executable,
            str(EXAMPLES / "qrng_template_server.py"),
            "--address",
            f"unix://{short_tmp / 'tpl.sock'}",
        ],
        env={"QRNG_API_KEY": "tpl-key"},
    )
    anonymous = make_client(server.address, grpc_mode="bidi_streaming")
    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        anonymous.get_random_bytes(16)
    keyed = make_client(server.address, grpc_mode="bidi_streaming", grpc_api_key="tpl-key")
    assert len(keyed.get_random_bytes(16)) == 16
    assert keyed.health_check()["server_status"] == "SERVING"
    assert "event=placeholder_hardware" in server.log()
    anonymous.close()
    keyed.close()
    assert server.terminate() == 0
    assert "event=stopped" in server.log()
    assert "tpl-key" not in server.log()
