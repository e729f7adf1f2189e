"""``qr-vllm demo``: generate with every token chosen by fresh entropy, and show how."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qr_vllm.demo._engine import closing_engine, environment, read_records
from qr_vllm.demo._entropy_server import EntropyServerProcess
from qr_vllm.demo._tiny_model import build_tiny_model

__all__ = ["DEFAULT_PROMPTS", "DemoOptions", "run_demo"]

DEFAULT_PROMPTS = (
    "The nature of consciousness is",
    "Once upon a time",
    "A random number is",
)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the demo runs (see ``qr-vllm demo --help``)."""

    model: str | None = None
    source: str = "quantum_grpc"
    server_source: str = "system"
    prompts: Sequence[str] = DEFAULT_PROMPTS
    max_tokens: int = 16
    records: Path = Path("qr-records.jsonl")
    session: str = "demo"
    multiprocess: bool = False


def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo; returns the exit status."""
    records = options.records.resolve()
    with contextlib.ExitStack() as stack:
        with console.status("building the tiny local model (cached after the first run)..."):
            model = options.model or str(build_tiny_model())
        env = {
            "QR_RECORDS_PATH": str(records),
            "QR_ENTROPY_SOURCE_TYPE": options.source,
            # Small KV cache, no hub (see ARCHITECTURE.md, design note "Engines in tests").
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if options.multiprocess else "0",
        }
        if options.model is None or Path(model).is_dir():
            env["HF_HUB_OFFLINE"] = "1"
        if options.source == "quantum_grpc" and "QR_GRPC_SERVER_ADDRESS" not in os.environ:
            with console.status(
                f"starting qr-entropy-server ({options.server_source}, Unix socket)..."
            ):
                server = stack.enter_context(EntropyServerProcess(source=options.server_source))
            env.update(server.environment("bidi_streaming"))
            console.print(f"[green]entropy server[/] {server.address} (bidi streaming)")
        stack.enter_context(environment(env))
        # The demo's records file starts empty so its table matches this run.
        records.unlink(missing_ok=True)

        with console.status("importing vLLM..."):
            from vllm import LLM, SamplingParams  # noqa: PLC0415 -- 15 s, shown as progress
        started = time.monotonic()
        with console.status(f"starting the vLLM engine with qr-sampler on {model}..."):
            llm = LLM(
                model=model,
                dtype="float32" if options.model is None else "auto",
                max_model_len=256,
                enforce_eager=True,
                seed=0,
            )
        console.print(f"[green]engine ready[/] in {time.monotonic() - started:.1f} s")
        with closing_engine(llm):
            params = [
                SamplingParams(
                    max_tokens=options.max_tokens,
                    extra_args={"qr_session": options.session, "qr_label": f"prompt-{i}"},
                )
                for i in range(len(options.prompts))
            ]
            outputs = llm.generate(list(options.prompts), params, use_tqdm=False)
            tokenizer = llm.get_tokenizer()
            expected = sum(len(o.outputs[0].token_ids) for o in outputs)
            rows = read_records(records, expected)
            _print(console, options, outputs, rows, tokenizer)
            console.print(
                f"\n{len(rows)} records for {expected} generated tokens "
                f"written to [bold]{records}[/]"
            )
            return 0 if len(rows) == expected else 1


def _print(
    console: Console,
    options: DemoOptions,
    outputs: Sequence[Any],
    rows: list[dict[str, Any]],
    tokenizer: Any,
) -> None:
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    for i, (prompt, output) in enumerate(zip(options.prompts, outputs, strict=True)):
        console.rule(f"prompt {i}")
        console.print(f"[bold]{prompt}[/][cyan]{output.outputs[0].text}[/]")
        table = Table(show_header=True, header_style="bold")
        for name in ("#", "token", "u", "rank", "probability", "source", "fallback"):
            table.add_column(name, justify="right" if name not in ("token", "source") else "left")
        mine = sorted(by_label.get(f"prompt-{i}", []), key=lambda r: r["sequence_number"])
        for row in mine:
            token = tokenizer.decode([row["token_id"]]) if row["token_id"] >= 0 else ""
            table.add_row(
                str(row["sequence_number"]),
                repr(token),
                "-" if row["u"] is None else f"{row['u']:.6f}",
                "-" if row["token_rank"] is None else str(row["token_rank"]),
                "-" if row["token_prob"] is None else f"{row['token_prob']:.4f}",
                row["entropy_source"],
                "yes" if row["is_fallback"] else "no",
            )
        console.print(table)
