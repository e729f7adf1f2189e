"""Runner V1's repetition / frequency / presence penalties, with vLLM's own function.

Runner V1 runs logits processors before it applies the penalties itself, so the
processor applies them to its rows first (see ARCHITECTURE.md, design note
"V1 penalties"). The only hot-path module that imports vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.utils.torch_utils import make_tensor_with_pad
from vllm.v1.sample.ops.penalties import apply_all_penalties

from qr_vllm._plan import PenaltyRows

__all__ = ["DevicePenalties"]


@dataclass(frozen=True, slots=True)
class DevicePenalties:
    """The penalty rows' tensors on the logits' device."""

    rows: PenaltyRows
    positions: torch.Tensor
    prompts: torch.Tensor  # padded with the vocabulary size, as vLLM pads
    presence: torch.Tensor
    frequency: torch.Tensor
    repetition: torch.Tensor

    @classmethod
    def build(cls, rows: PenaltyRows, vocab: int, device: torch.device) -> DevicePenalties:
        """Put ``rows`` on ``device`` (logits ``vocab`` wide)."""
        return cls(
            rows=rows,
            positions=torch.as_tensor(rows.positions, dtype=torch.int64, device=device),
            prompts=make_tensor_with_pad(
                [list(s.prompt_ids or ()) for s in rows.states],
                pad=vocab,
                dtype=torch.int64,
                device=device,
            ),
            presence=torch.as_tensor(rows.presence, device=device),
            frequency=torch.as_tensor(rows.frequency, device=device),
            repetition=torch.as_tensor(rows.repetition, device=device),
        )

    def apply(self, sub: torch.Tensor) -> None:
        """Apply the penalties to their rows of the sampled rows' logits ``sub``, in place."""
        part = sub.index_select(0, self.positions)
        outputs = [list(s.output_ids or ()) for s in self.rows.states]
        part = apply_all_penalties(
            part, self.prompts, self.presence, self.frequency, self.repetition, outputs
        )
        sub.index_copy_(0, self.positions, part)
