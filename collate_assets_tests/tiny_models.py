"""A tiny randomly initialised Llama for the training tests (float32, CPU), and next-token losses.

Imported only by test modules that have already made sure torch is installed (`pytest.importorskip`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

# With the default 0.02 the tiny model predicts almost uniformly (|logits| < 1): each token's loss is
# ~ln(vocab) whatever its context, and the context changes of a broken packing cancel in a row's sum
# (one row's sum moved by only 6.7e-6 relative with position_ids = arange). A wider init makes the loss
# depend on context, so the checks have power; float32 logit noise stays ~4e-6, under the tests' 1e-5.
INITIALIZER_RANGE = 0.1


def tiny_llama(vocab_size: int, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """The same weights on every call (seeded): only the attention implementation differs."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=INITIALIZER_RANGE,
        attn_implementation=attn_implementation,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    assert model.config._attn_implementation == attn_implementation  # no silent fallback
    return model


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """-log p(ids[t + 1] | ..t) for every t of one sequence (logits of shape (tokens, vocab))."""
    return F.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")
