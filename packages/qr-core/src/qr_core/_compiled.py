"""The compiled fast path: the per-step full-vocabulary passes fused by ``torch.compile``.

Three passes over the whole vocabulary dominate a step on torch tensors: the
Shannon entropy (with the finite count EDT needs), the mass outside the head,
and the bucket pass of full-vocabulary rows (``qr_core._locate``). Eager torch
runs each as several passes with full-size temporaries; compiled (Inductor
emits C++/OpenMP on the CPU and Triton on GPUs) each is one or two passes and
no temporary. The eager code stays, and is used when ``QR_COMPILE=off``, for
numpy arrays and small CPU tensors (their numpy views), and whenever
compilation is unavailable (logged once). Each kernel compiles once per
device, dtype and shape class: the batch and vocabulary sizes are symbolic
(a size of 1 is its own class). See ARCHITECTURE.md, design note
"Compiled path".
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from typing import Any

from qr_core._errors import QRCoreError
from qr_core._small import SMALL_VOCAB, select_sorted

__all__ = ["COMPILE_ENV", "MODES", "compiled", "enabled", "mode", "reset", "warm_up"]

logger = logging.getLogger("qr_core")

#: The switch: ``auto`` (compiled where a compiler is present), ``on``, ``off`` (the default).
COMPILE_ENV = "QR_COMPILE"
MODES = ("auto", "on", "off")

#: Graphs per kernel before torch.compile gives up on new classes (see `compiled`).
_RECOMPILE_LIMIT = 64

_LOCK = threading.Lock()
_state: dict[str, Any] = {}


def mode() -> str:
    """The ``QR_COMPILE`` setting, checked.

    Raises:
        QRCoreError: A value other than ``auto``, ``on`` or ``off``.
    """
    # Off by default: on a small CPU host the compile takes 10-30 s at every engine start
    # and measured slower than eager at batch 1 (see ARCHITECTURE.md, design note
    # "Compiled path").
    value = os.environ.get(COMPILE_ENV, "off").strip().lower() or "off"
    if value not in MODES:
        msg = f"{COMPILE_ENV} must be one of {', '.join(MODES)}; got {value!r}"
        raise QRCoreError(msg)
    return value


def reset() -> None:
    """Forget the compiled kernels and any recorded failure (tests switch modes with it)."""
    with _LOCK:
        _state.clear()


def _entropy_stats(x: Any) -> tuple[Any, Any, Any]:
    import torch  # noqa: PLC0415 - traced by torch.compile, only ever called with tensors

    work = x if x.dtype == torch.float64 else x.float()
    lowest = torch.finfo(work.dtype).min
    row_max = work.amax(1)
    shifted = (work - row_max[:, None]).clamp_min(lowest)
    weights = torch.exp(shifted)
    mass = weights.sum(1)
    entropy = torch.log(mass) - (weights * shifted).sum(1) / mass
    finite = (x != float("-inf")).sum(1)
    return row_max, entropy.clamp_min(0.0), finite


def _tail_mass(x: Any, top: Any, inv_t: Any, boundary: Any) -> Any:
    import torch  # noqa: PLC0415

    w = torch.exp((x - top[:, None]) * inv_t[:, None])
    return torch.where(x <= boundary[:, None], w, 0.0).sum(1)


def _bucket_mass(x: Any, top: Any, inv_t: Any, width: float, buckets: int) -> tuple[Any, Any]:
    import torch  # noqa: PLC0415

    d = (top[:, None] - x) * inv_t[:, None]
    z = torch.exp(-d)
    bucket = (d * (1.0 / width)).clamp(max=buckets - 1).to(torch.int64)
    mass = torch.zeros((x.shape[0], buckets), dtype=z.dtype, device=x.device)
    return bucket, mass.scatter_add(1, bucket, z)


_KERNELS = {
    "entropy": _entropy_stats,
    "tail": _tail_mass,
    "buckets": _bucket_mass,
    "small": select_sorted,
}


def _available(device_type: str) -> str | None:
    """Why compilation cannot work here (None when it may), judged without compiling."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:  # pragma: no cover - qr_core without torch never holds a tensor
        return "torch is not installed"
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if device_type == "cpu":
        if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")):
            return "no C++ compiler (g++ or clang++) on PATH"
    elif device_type == "cuda":
        import importlib.util  # noqa: PLC0415

        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed"
    else:
        return f"no compiled path for {device_type} devices"
    return None


def _kernel(name: str, device_type: str) -> Any | None:
    setting = mode()
    if setting == "off":
        return None
    key = f"{name}:{device_type}"
    with _LOCK:
        if f"failed:{device_type}" in _state:
            return None
        fn = _state.get(key)
        if fn is None:
            why = _available(device_type) if setting == "auto" else None
            if why is not None:
                _give_up(device_type, why)
                return None
            import torch  # noqa: PLC0415

            # Shape classes x dtypes x inference mode exceed dynamo's default of 8 graphs
            # per function; raise the limit (never lower it).
            config = torch._dynamo.config
            config.recompile_limit = max(config.recompile_limit, _RECOMPILE_LIMIT)
            # One graph per shape class: every size symbolic, except sizes of 1 (which
            # torch.compile always specialises), so a new batch size never compiles again.
            fn = _state[key] = torch.compile(_KERNELS[name], fullgraph=True, dynamic=True)
        return fn


def _give_up(device_type: str, why: str) -> None:
    if f"failed:{device_type}" not in _state:
        _state[f"failed:{device_type}"] = why
        logger.warning(
            "qr_core: compiled path unavailable on %s (%s); using the eager path (%s=off "
            "silences this)",
            device_type,
            why,
            COMPILE_ENV,
        )


def enabled(device_type: str) -> bool:
    """True when the compiled path is on and has not failed for ``device_type``."""
    return _kernel("small", device_type) is not None


def compiled(name: str, x: Any, *args: Any) -> Any | None:
    """Run kernel ``name`` on ``x`` compiled, or return None: the caller then runs eager code.

    Args:
        name: ``entropy``, ``tail``, ``buckets`` or ``small``.
        x: The ``(rows, vocab)`` logits tensor.
        args: The kernel's other arguments.
    """
    device_type = x.device.type
    fn = _kernel(name, device_type)
    if fn is None:
        return None
    try:
        return fn(x, *args)
    except Exception as exc:
        with _LOCK:
            _give_up(device_type, f"{type(exc).__name__}: {str(exc)[:200]}")
        return None


def warm_up(device: Any, vocab: int, dtype: Any = None, *, inference: bool = True) -> float:
    """Compile every kernel for ``vocab``-wide logits now, so no request pays for it.

    Runs entropy, EDT and a full-vocabulary selection (head, tail mass, bucket
    pass) at batch 1 and at a batch of several rows, under ``torch.inference_mode``
    when ``inference`` (as vLLM runs its steps). A no-op when the mode is ``off``.

    Args:
        device: The logits' torch device.
        vocab: The vocabulary size.
        dtype: The logits' dtype (default float32).
        inference: Warm up under inference mode.

    Returns:
        Seconds spent (0 when nothing was compiled).
    """
    if mode() == "off":
        return 0.0
    import torch  # noqa: PLC0415

    from qr_core._array import SMALL_HOST_ELEMENTS  # noqa: PLC0415
    from qr_core._locate import BUCKET_WIDTH, BUCKETS  # noqa: PLC0415
    from qr_core._selection import TokenSelector  # noqa: PLC0415
    from qr_core.temperature import EDTTemperatureStrategy  # noqa: PLC0415

    started = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    if 2 <= vocab <= SMALL_VOCAB:
        batches = [1, 2]  # the fused small path, whatever the batch
    else:  # batches that reach torch, past the small-tensor numpy shortcut
        batches = [
            b
            for b in (1, max(2, SMALL_HOST_ELEMENTS // max(vocab, 1) + 1), 3)
            if b * vocab > SMALL_HOST_ELEMENTS
        ]
    selector = TokenSelector()
    context = torch.inference_mode() if inference else torch.no_grad()
    with context:
        for rows in dict.fromkeys(batches):
            logits = (torch.randn(rows, vocab, generator=gen) * 3).to(
                device, dtype or torch.float32
            )
            temps = EDTTemperatureStrategy().compute_batch(logits).temperature
            for u in (0.5, 1 - 1e-6):
                # Validating: the general path (small CPU batches skip it without).
                selector.select_batch(logits, temperature=temps, top_k=0, top_p=1.0, u=u)
        if vocab > SMALL_VOCAB:
            # Retries and located rows run the kernels on one-row subsets of any batch.
            one = (torch.randn(1, vocab, generator=gen) * 3).to(device, dtype or torch.float32)
            work = torch.float64 if one.dtype == torch.float64 else torch.float32
            top, inv_t = one.amax(1).to(work), torch.ones(1, dtype=work, device=one.device)
            compiled("entropy", one)
            compiled("tail", one, top, inv_t, top - 1.0)
            compiled("buckets", one, top, inv_t, BUCKET_WIDTH, BUCKETS)
    return time.perf_counter() - started
