"""The ``qr-vllm`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qr_vllm._compat import SUPPORTED_VLLM, installed_vllm_version
from qr_vllm._config import PER_REQUEST_FIELDS, QRSamplerConfig
from qr_vllm.demo._run import DEFAULT_PROMPTS, DemoOptions, run_demo

__all__ = ["app", "main"]

app = typer.Typer(
    help="qr-vllm: vLLM token sampling driven by external entropy, with per-token records.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def demo(  # noqa: PLR0917 -- typer maps each parameter to an option
    model: Annotated[
        str | None,
        typer.Option(help="Local directory or hub id of a model (default: the tiny local model)."),
    ] = None,
    source: Annotated[
        str,
        typer.Option(help="Entropy source used by the processor (any installed source)."),
    ] = "quantum_grpc",
    server_source: Annotated[
        str, typer.Option(help="Source the local gRPC server reads from (with quantum_grpc).")
    ] = "system",
    prompt: Annotated[list[str] | None, typer.Option(help="A prompt (repeat for several).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, max=200, help="Tokens per prompt.")] = 16,
    records: Annotated[Path, typer.Option(help="Records file (JSON Lines), overwritten.")] = Path(
        "qr-records.jsonl"
    ),
    multiprocess: Annotated[
        bool, typer.Option(help="Run the engine in its own process (vLLM's default).")
    ] = False,
) -> None:
    """Generate with the tiny model and show how every token was chosen."""
    console = Console()
    options = DemoOptions(
        model=model,
        source=source,
        server_source=server_source,
        prompts=tuple(prompt) if prompt else DEFAULT_PROMPTS,
        max_tokens=max_tokens,
        records=records,
        multiprocess=multiprocess,
    )
    raise typer.Exit(run_demo(options, console))


@app.command()
def replay(
    records: Annotated[Path, typer.Argument(help="Records file (JSON Lines) to replay.")],
    model: Annotated[str, typer.Option(help="The model of the recorded run (directory or id).")],
    prompts: Annotated[
        Path,
        typer.Option(help="JSON: the prompts, an object by qr_label or a list in request order."),
    ],
    dtype: Annotated[str, typer.Option(help="vLLM dtype, as in the recorded run.")] = "auto",
    max_model_len: Annotated[int | None, typer.Option(help="vLLM max_model_len.")] = None,
) -> None:
    """Re-run the recorded requests with their recorded u; report every token that differs."""
    import json  # noqa: PLC0415

    from qr_vllm._replay import read_requests, replay_requests  # noqa: PLC0415
    from qr_vllm.demo._engine import closing_engine, environment  # noqa: PLC0415

    console = Console()
    requests = read_requests(records)
    wanted = json.loads(prompts.read_text())
    # The source's bytes are fetched and ignored: a local one keeps the device free.
    with environment({"QR_ENTROPY_SOURCE_TYPE": "system", "QR_SOURCES": "{}"}):
        from vllm import LLM  # noqa: PLC0415

        llm = LLM(model=model, dtype=dtype, max_model_len=max_model_len, seed=0)  # type: ignore[arg-type]
    with closing_engine(llm):
        mismatches = replay_requests(llm, requests, wanted)
    tokens = sum(len(r.token_ids) for r in requests)
    for m in mismatches:
        console.print(
            f"MISMATCH engine_id={m.engine_id} request_serial={m.request_serial} "
            f"label={m.label!r} position={m.position}: recorded {m.recorded}, replayed {m.replayed}"
        )
    console.print(
        f"{tokens - len(mismatches)} of {tokens} tokens of {len(requests)} requests match"
    )
    raise typer.Exit(1 if mismatches else 0)


@app.command()
def config() -> None:
    """Print the configuration read from QR_* variables and .env, and the vLLM check."""
    console = Console()
    settings = QRSamplerConfig()
    console.print(f"vLLM installed: {installed_vllm_version()} (supported: {SUPPORTED_VLLM})")
    for name, value in settings.model_dump().items():
        scope = "per request" if name in PER_REQUEST_FIELDS else "server"
        console.print(f"QR_{name.upper()} = {value!r}  [dim]({scope})[/]")


def main() -> None:
    """Console-script entry point."""
    app()
