"""Round-trip latency of QuantumGrpcSource per mode and transport, against os.urandom.

One command:

    uv run --frozen --no-sync python benchmarks/bench_grpc.py [--quick]

Starts ``qr-entropy-server --source system`` as a separate process on loopback TCP and on
a Unix socket, then times ``get_random_bytes`` (one request, one response, length
checked) for 20,480 bytes and for 64 x 20,480 bytes in each mode. The floor is
``os.urandom`` of the same size, timed in the same run, so the "over floor" column is the
cost of the transport. A "raw grpc.aio bidi" row does the same exchange with bare
grpc.aio in its own event loop, the reference for what gRPC itself costs on this machine.
A section times ``fetch_block`` (what the logits processor calls), which adds the
client-side SP 800-90B health tests and row digests. The last one runs the same
``fetch_block`` against servers with ``--audit-log`` off, on with the ``interval`` fsync
policy and on with ``always``, in alternating rounds (target of issue #15: the audit log
costs at most 1.2x the p50 latency).

Target (issue #4): bidi_streaming over a Unix socket within 300 µs p50 of the floor for a
20,480-byte fetch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from qr_grpc import GrpcSettings, QuantumGrpcSource

SMALL = 20_480
ROWS = 64
MODES = ("unary", "server_streaming", "bidi_streaming")
TARGET_US = 300.0


def _start_server(address: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "qr_grpc.server", "--source", "system"),
            *("--address", address, *extra),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "event=serving" in line:
            bound = line.split("address=", 1)[1].split()[0]
            return proc, bound
    raise RuntimeError(f"server on {address} did not start (exit {proc.wait()})")


def _settings(address: str, mode: str) -> GrpcSettings:
    # The default settings: a fetch waits for its 1 s deadline, so a scheduling hiccup on
    # a busy machine is measured as latency instead of failing.
    return GrpcSettings(
        grpc_server_address=address,
        grpc_mode=mode,  # type: ignore[arg-type]
    )


def _time(fn: Callable[[], object], iterations: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(iterations)
    clock = time.perf_counter_ns
    for i in range(iterations):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return out / 1000.0  # µs


def _raw_aio_bidi(address: str, size: int, count: int, warmup: int) -> np.ndarray:
    """The same exchange with bare grpc.aio on its own loop: no qr-grpc client around it.

    This is the reference for what gRPC itself costs here (the client's thread hop,
    breaker and length check are what the QuantumGrpcSource rows add on top).
    """
    import asyncio

    import grpc.aio
    from qr_grpc import entropy_service_pb2 as pb2

    async def run() -> np.ndarray:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.stream_stream(
                "/qr_entropy.EntropyService/StreamEntropy",
                request_serializer=pb2.EntropyRequest.SerializeToString,
                response_deserializer=pb2.EntropyResponse.FromString,
            )()
            out = np.empty(count)
            for i in range(-warmup, count):
                t0 = time.perf_counter_ns()
                await call.write(pb2.EntropyRequest(bytes_needed=size, sequence_id=i + warmup + 1))
                await call.read()
                if i >= 0:
                    out[i] = time.perf_counter_ns() - t0
            # End the call normally (not cancel) so no event is left for a closed loop.
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
            return out / 1000.0

    return asyncio.run(run())


def _audit_rows(
    addresses: dict[str, str], iterations: dict[int, int], warmup: int, rounds: int
) -> list[tuple[str, int, float, float, float]]:
    """fetch_block(rows, 20,480) over bidi + unix against servers with the audit log off,
    on with the interval fsync policy and on with ``always``; rounds alternate the
    servers so they share the machine's noise. Returns (server, rows, p50, p99, p50 ratio
    to the server without a log)."""
    lat: dict[tuple[str, int], list[np.ndarray]] = {}
    sources = {
        name: QuantumGrpcSource(_settings(address, "bidi_streaming"))
        for name, address in addresses.items()
    }
    try:
        for _ in range(rounds):
            for rows_n, count in ((1, iterations[SMALL]), (ROWS, iterations[ROWS * SMALL])):
                for name, source in sources.items():
                    lat.setdefault((name, rows_n), []).append(
                        _time(
                            lambda s=source, r=rows_n: s.fetch_block(r, SMALL),
                            max(count // rounds, 5),
                            warmup,
                        )
                    )
    finally:
        for source in sources.values():
            source.close()
    out = []
    for (name, rows_n), parts in lat.items():
        joined = np.concatenate(parts)
        p50, p99 = float(np.percentile(joined, 50)), float(np.percentile(joined, 99))
        off = float(np.percentile(np.concatenate(lat[("audit off", rows_n)]), 50))
        out.append((name, rows_n, p50, p99, p50 / off))
    return sorted(out, key=lambda r: (r[1], list(addresses).index(r[0])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    args = parser.parse_args(argv)
    iterations = {SMALL: 30, ROWS * SMALL: 10} if args.quick else {SMALL: 2000, ROWS * SMALL: 200}
    warmup = 5 if args.quick else 100

    tmp = tempfile.mkdtemp(prefix="qr-bench-")
    servers = []
    try:
        tcp_proc, tcp_addr = _start_server("127.0.0.1:0")
        servers.append(tcp_proc)
        unix_proc, unix_addr = _start_server(f"unix://{Path(tmp) / 'bench.sock'}")
        servers.append(unix_proc)

        rows: list[tuple[str, str, int, float, float, float]] = []
        floor: dict[int, tuple[float, float]] = {}
        for size, count in iterations.items():
            lat = _time(lambda size=size: os.urandom(size), count, warmup)
            floor[size] = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))
            rows.append(("os.urandom (floor)", "-", size, *floor[size], 0.0))

        for transport, address in (("tcp", tcp_addr), ("unix", unix_addr)):
            for mode in MODES:
                source = QuantumGrpcSource(_settings(address, mode))
                try:
                    for size, count in iterations.items():
                        lat = _time(lambda s=source, n=size: s.get_random_bytes(n), count, warmup)
                        p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
                        rows.append((mode, transport, size, p50, p99, p50 - floor[size][0]))
                finally:
                    source.close()

        for size, count in iterations.items():
            lat = _raw_aio_bidi(unix_addr, size, count, warmup)
            p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
            rows.append(("raw grpc.aio bidi", "unix", size, p50, p99, p50 - floor[size][0]))

        audit_addresses = {"audit off": unix_addr}
        for policy in ("interval", "always"):
            proc, address = _start_server(
                f"unix://{Path(tmp) / f'audit-{policy}.sock'}",
                *("--audit-log", str(Path(tmp) / f"audit-{policy}.jsonl")),
                *("--audit-fsync", policy),
            )
            servers.append(proc)
            audit_addresses[f"audit {policy}"] = address
        audit = _audit_rows(audit_addresses, iterations, warmup, 3 if args.quick else 10)

        block_rows = []
        source = QuantumGrpcSource(_settings(unix_addr, "bidi_streaming"))
        try:
            for rows_n, count in ((1, iterations[SMALL]), (ROWS, iterations[ROWS * SMALL])):
                lat = _time(lambda s=source, r=rows_n: s.fetch_block(r, SMALL), count, warmup)
                block_rows.append(
                    (rows_n, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))
                )
        finally:
            source.close()
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)

    print(
        "QuantumGrpcSource.get_random_bytes round trip (µs); "
        f"{'quick' if args.quick else 'full'} run"
    )
    header = (
        f"{'mode':<20} {'transport':<9} {'bytes':>9} {'p50':>9} {'p99':>9} {'p50 over floor':>15}"
    )
    print(header)
    print("-" * len(header))
    for mode, transport, size, p50, p99, over in rows:
        print(f"{mode:<20} {transport:<9} {size:>9,} {p50:>9.1f} {p99:>9.1f} {over:>15.1f}")
    print()
    print("fetch_block(rows, 20,480) over bidi_streaming + unix, with client health tests (µs)")
    for rows_n, p50, p99 in block_rows:
        print(f"  rows={rows_n:<3} p50={p50:9.1f} p99={p99:9.1f}")
    print()
    print(
        "audit log (issue #15): fetch_block(rows, 20,480) over bidi_streaming + unix, "
        "servers used in alternating rounds (µs)"
    )
    for name, rows_n, p50, p99, ratio in audit:
        print(f"  {name:<15} rows={rows_n:<3} p50={p50:9.1f} p99={p99:9.1f} p50 ratio={ratio:5.2f}")
    target = next(r for r in rows if r[0] == "bidi_streaming" and r[1] == "unix" and r[2] == SMALL)
    verdict = "met" if target[5] <= TARGET_US else "MISSED"
    print(
        f"\ntarget: bidi_streaming/unix 20,480 B p50 within {TARGET_US:.0f} µs of the floor: "
        f"{target[5]:.1f} µs ({verdict})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
