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
