"""A tiny random-weight Llama and its tokenizer, built offline and cached.

The demo and the integration tests need a real model that vLLM can load on a
machine without the Hugging Face hub. This builds one in a few seconds from
``transformers`` and ``tokenizers`` alone: a byte-level BPE tokenizer trained
on a built-in English text, and a Llama with hidden size 64 and two heads of
size 32 (a head size the CPU attention backend accepts). The weights come from
a fixed seed, so every build with the same parameters gives the same model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["TinyModelSpec", "build_tiny_model", "default_cache_dir"]

#: Bumped whenever the builder changes what it writes, so old caches are not reused.
_BUILDER_VERSION = 1

# Public-domain style English prose, enough for a BPE of a couple of thousand tokens
# to learn common words, so generated text looks like text and not byte soup.
_CORPUS = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins
with a single step. All that glitters is not gold. The early bird catches the worm.
In the beginning the sky was dark and the sea was quiet, and the people of the town
watched the light come over the hills. They walked to the river, they talked about
the weather, the harvest, the stars and the long roads that led to the city.
Once upon a time there was a small house at the edge of a great forest. In the house
lived an old woman, her daughter and a grey cat who liked to sleep by the fire.
Every morning the daughter went to the well to fetch water, and every evening she
told her mother what she had seen: birds, deer, travellers, merchants and soldiers.
Science is the careful study of the world through observation and experiment.
A random number is a value drawn so that no one can predict it in advance.
Quantum physics describes how light and matter behave at the smallest scales.
The nature of consciousness is one of the oldest questions of philosophy.
Language models predict the next word from the words that came before it.
Sampling chooses one word from many, weighted by how likely each one is.
The weather today is cold and bright, with a light wind from the north.
She opened the door, looked at the garden and smiled at the morning sun.
He wrote a letter to his brother about the mountains, the rivers and the sea.
Numbers, letters, words and sentences make up the stories that we tell.
"""


@dataclass(frozen=True, slots=True)
class TinyModelSpec:
    """Parameters of the tiny model; their hash names the cache directory.

    Attributes:
        vocab_size: Target size of the BPE vocabulary (the model's vocabulary).
        hidden_size: Model width; with ``num_heads`` it fixes the head size.
        num_heads: Attention heads (hidden_size / num_heads must be a size the
            CPU attention backend supports, such as 32 or 64).
        num_layers: Decoder layers.
        intermediate_size: Width of the MLP.
        max_position_embeddings: Longest sequence the model accepts.
        seed: Seed of the random weights.
    """

    vocab_size: int = 2000
    hidden_size: int = 64
    num_heads: int = 2
    num_layers: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    seed: int = 0

    @property
    def digest(self) -> str:
        """A short hash of the parameters and the builder version."""
        payload = json.dumps({"v": _BUILDER_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """Where built models are kept: ``$QR_MODEL_CACHE`` or ``~/.cache/qr-sampler/models``."""
    env = os.environ.get("QR_MODEL_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "qr-sampler" / "models"


def build_tiny_model(
    spec: TinyModelSpec | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Build the tiny model once and return its directory (cached by the spec's hash).

    The model is written to a temporary directory beside the cache entry and
    renamed into place, so concurrent builders (parallel tests, two demos) never
    see a half-written model.

    Args:
        spec: The model's parameters; the defaults give the model the tests use
            (see ARCHITECTURE.md, design note "Tiny offline model").
        cache_dir: Parent directory of the cache entries (default `default_cache_dir`).

    Returns:
        A directory that ``vllm.LLM(model=...)`` and ``transformers`` can load.
    """
    spec = spec or TinyModelSpec()
    root = cache_dir or default_cache_dir()
    target = root / f"tiny-llama-{spec.digest}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=root))
    try:
        logger.info("building the tiny model %s in %s", spec, target)
        _write_tokenizer(spec, staging)
        _write_model(spec, staging)
        try:
            staging.rename(target)
        except OSError:
            # Another builder won the race; its copy is identical (same spec, same seed).
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_tokenizer(spec: TinyModelSpec, out: Path) -> None:
    # tokenizers, transformers and torch are big imports, needed only when building.
    from tokenizers import (  # noqa: PLC0415
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    # Repeating the text lets the trainer reach the target vocabulary size.
    tokenizer.train_from_iterator(lines * 4, trainer=trainer)
    tokenizer.save(str(out / "tokenizer.json"))
    # No chat template: the model is a plain completion model.
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": False,
        "model_max_length": spec.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def _write_model(spec: TinyModelSpec, out: Path) -> None:
    import torch  # noqa: PLC0415
    from tokenizers import Tokenizer  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size()
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.token_to_id("<s>"),
        eos_token_id=tokenizer.token_to_id("</s>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    # transformers is untyped here; the model is used only to write its weights.
    model_cls: Any = LlamaForCausalLM
    model = model_cls(config)
    # Random weights with the default init give near-uniform logits; a wider output
    # layer gives peaked distributions, so top-k / top-p / temperature visibly matter.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(str(out), safe_serialization=True)
