"""`qr-vllm replay`: re-run a records file's requests through a real engine with their recorded u.

Each request of the file (an ``engine_id`` and ``request_serial``, its ``ok``
tokens) is sent again, one at a time, with ``qr_replay_u`` set to its tokens' u
in order and its recorded filters, temperature and amplifier; the engine's
processor then chooses each token with the recorded u instead of the source's.
Every token whose replayed id differs from the recorded one is reported with its
position. When logits are reproducible this confirms token = f(logits, u) for
the run; see ARCHITECTURE.md, design note "Replay" for when they are not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Mismatch", "RecordedRequest", "read_requests", "replay_requests"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request of a records file: its identity, settings and tokens in order."""

    engine_id: str
    request_serial: int
    label: str
    token_ids: tuple[int, ...]
    u: tuple[float, ...]
    extra_args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A token the replay chose differently: where, and both ids (-1: no token)."""

    engine_id: str
    request_serial: int
    label: str
    position: int
    recorded: int
    replayed: int


def read_requests(path: Path) -> list[RecordedRequest]:
    """The requests of a records file, in file order of their first token.

    The last record per (``engine_id``, ``request_serial``, ``sequence_number``)
    counts (a discarded chunked-prefill sample is superseded); a request with a
    failed record, or whose positions do not run 0, 1, ..., is left out.

    Raises:
        ValueError: A request whose temperature strategy is not ``fixed`` (its
            other parameters are not in the records).
    """
    tokens: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        key = (str(record.get("engine_id", "")), int(record["request_serial"]))
        tokens.setdefault(key, {})[int(record["sequence_number"])] = record
    requests = []
    for (engine_id, serial), by_position in tokens.items():
        rows = [by_position[i] for i in sorted(by_position)]
        if sorted(by_position) != list(range(len(rows))):
            continue
        if any(r["status"] != "ok" for r in rows):
            continue
        first = rows[0]
        if first["temperature_strategy"] != "fixed":
            raise ValueError(
                f"request {engine_id}/{serial}: temperature_strategy "
                f"{first['temperature_strategy']!r} cannot be replayed from records (only "
                "'fixed': the records hold the temperature but not the strategy's parameters)"
            )
        extra = {
            "qr_replay_u": [r["u"] for r in rows],
            "qr_temperature_strategy": "fixed",
            "qr_fixed_temperature": first["temperature"],
            "qr_top_k": first["top_k"],
            "qr_top_p": first["top_p"],
            "qr_min_p": first["min_p"],
            "qr_signal_amplifier_type": first["signal_amplifier"],
            "qr_sample_count": first["sample_count"],
            "qr_label": f"replay:{first['label']}",
        }
        requests.append(
            RecordedRequest(
                engine_id=engine_id,
                request_serial=serial,
                label=str(first["label"]),
                token_ids=tuple(int(r["token_id"]) for r in rows),
                u=tuple(float(r["u"]) for r in rows),
                extra_args=extra,
            )
        )
    return requests


def replay_requests(
    llm: Any, requests: Sequence[RecordedRequest], prompts: Mapping[str, str] | Sequence[str]
) -> list[Mismatch]:
    """Send each request alone through ``llm`` and list every token that differs.

    Args:
        llm: A ``vllm.LLM`` whose processor is qr-sampler.
        requests: From `read_requests`.
        prompts: The prompt of each request: by label, or a list in request order.

    Raises:
        KeyError: A request has no prompt.
    """
    from vllm import SamplingParams  # noqa: PLC0415 -- vLLM loads only when replaying

    mismatches: list[Mismatch] = []
    for index, request in enumerate(requests):
        prompt = prompts[request.label] if isinstance(prompts, Mapping) else prompts[index]
        params = SamplingParams(
            max_tokens=len(request.token_ids),
            min_tokens=len(request.token_ids),
            ignore_eos=True,
            extra_args=dict(request.extra_args),
        )
        # One at a time: the batch holds only this request, as fixed as it can be.
        out = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
        replayed = list(out.token_ids)
        for position, recorded in enumerate(request.token_ids):
            got = replayed[position] if position < len(replayed) else -1
            if got != recorded:
                mismatches.append(
                    Mismatch(
                        request.engine_id,
                        request.request_serial,
                        request.label,
                        position,
                        recorded,
                        got,
                    )
                )
    return mismatches
