"""The generated stubs are current and the wire layout is the protocol's.

See ARCHITECTURE.md, design note "The wire contract".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qr_grpc import entropy_service_pb2, entropy_service_pb2_grpc

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gen_proto.py"


def test_generated_stubs_match_the_proto() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_check_reports_a_stale_stub(tmp_path: Path) -> None:
    # Run the checker against a copy of src/ whose generated module was edited by hand.
    src = SCRIPT.parents[1] / "src"
    copy = tmp_path / "pkg"
    (copy / "scripts").mkdir(parents=True)
    (copy / "scripts" / "gen_proto.py").write_text(SCRIPT.read_text())
    proto_dir = copy / "src" / "qr_grpc" / "_proto"
    proto_dir.mkdir(parents=True)
    for item in (src / "qr_grpc" / "_proto").iterdir():
        if item.is_file():
            (proto_dir / item.name).write_bytes(item.read_bytes())
    stale = proto_dir / "entropy_service_pb2.pyi"
    stale.write_text(stale.read_text() + "# hand edit\n")
    result = subprocess.run(
        [sys.executable, str(copy / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "hand edit" in result.stderr
    assert "stale" in result.stderr


def test_wire_layout_is_the_contract() -> None:
    service = entropy_service_pb2.DESCRIPTOR.services_by_name["EntropyService"]
    assert service.full_name == "qr_entropy.EntropyService"
    get, stream = service.methods_by_name["GetEntropy"], service.methods_by_name["StreamEntropy"]
    assert not get.client_streaming
    assert not get.server_streaming
    assert stream.client_streaming
    assert stream.server_streaming
    request = entropy_service_pb2.EntropyRequest.DESCRIPTOR.fields_by_name
    response = entropy_service_pb2.EntropyResponse.DESCRIPTOR.fields_by_name
    assert {name: f.number for name, f in request.items()} == {
        "bytes_needed": 1,
        "sequence_id": 2,
        "rows": 3,
    }
    assert {name: f.number for name, f in response.items()} == {
        "data": 1,
        "sequence_id": 2,
        "generation_timestamp_ns": 3,
        "device_id": 4,
    }
    # Generated server helpers are shipped for people writing their own servers.
    assert hasattr(entropy_service_pb2_grpc, "add_EntropyServiceServicer_to_server")
