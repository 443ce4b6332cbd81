"""Training the language models: the byte-level BPE tokenizer's training, the token stream, the learning-rate
schedule, held-out perplexity and throughput. The transformer, generation and the artifact belong to the model
contract (``governance.contract.language``), re-exported here for the steps that use both halves.

The same module serves teacher and student; only the sizes differ. Generation left-pads a batch of
prompts and masks the padding, so concurrent requests of different lengths share forward passes.
CUDA is used when ``torch.cuda.is_available()`` (bf16 autocast in training), CPU otherwise.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from convergence.governance.contract import language as contract
from convergence.platform.errors import InvalidInput

# The model contract's half (tokenizer use, transformer, generation, artifact), named here for the training code
# that calls it beside the training half; the contract module is its one owner.
ARTIFACT_FORMAT, LEGACY_FORMAT, EOS = contract.ARTIFACT_FORMAT, contract.LEGACY_FORMAT, contract.EOS
tokenizer_from_str, encode, decode = contract.tokenizer_from_str, contract.encode, contract.decode
arch, build, generate, sample_rows = contract.arch, contract.build, contract.generate, contract.sample_rows
save_artifact, load_artifact, read_legacy_artifact = contract.save_artifact, contract.load_artifact, contract.read_legacy_artifact


# --- tokenizer ------------------------------------------------------------------------------------

def train_tokenizer(texts: Iterable[str], *, vocab_size: int, min_frequency: int) -> Any:
    """Byte-level BPE: every byte is in the alphabet, so any UTF-8 text encodes and decodes back exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def encode_documents(tok: Any, texts: list[str]) -> np.ndarray:
    """The documents as one token stream, each followed by the end-of-text token."""
    eos = tok.token_to_id(EOS)
    stream: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        stream.extend(enc.ids)
        stream.append(eos)
    return np.asarray(stream, dtype=np.int32)


# --- the transformer ------------------------------------------------------------------------------

def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lr_at(step: int, *, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def optimizer(model: Any, lr: float) -> Any:
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def batch_windows(tokens: np.ndarray, *, context: int, batch: int, gen: Any) -> Any:
    """``batch`` random windows of ``context + 1`` tokens (inputs and next-token targets)."""
    import torch

    starts = torch.randint(0, len(tokens) - context - 1, (batch,), generator=gen).numpy()
    return torch.from_numpy(np.stack([tokens[s:s + context + 1] for s in starts]).astype(np.int64))


def check_stream(tokens: np.ndarray, context: int, what: str) -> None:
    if len(tokens) < context + 2:
        raise InvalidInput(f"the {what} has {len(tokens)} tokens, fewer than one training window "
                           f"({context + 2}); use more text or a shorter train.context")


# --- evaluation -----------------------------------------------------------------------------------

def perplexity(model: Any, tokens: np.ndarray, *, context: int, batch: int = 8) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``context`` predictions."""
    import torch
    from torch.nn import functional as F

    n = (len(tokens) - 1) // context
    if n < 1:
        raise InvalidInput(f"{len(tokens)} tokens is too short to score with a context of {context}")
    windows = np.stack([tokens[i * context:i * context + context + 1] for i in range(n)]).astype(np.int64)
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, n, batch):
            w = torch.from_numpy(windows[s:s + batch]).to(device)
            logits = model(w[:, :-1]).float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += w[:, 1:].numel()
    return math.exp(total / count)


def tokens_per_second(model: Any, prompt: list[int], *, batch: int, new_tokens: int, repeats: int) -> float:
    """Greedy generation throughput for ``batch`` concurrent copies of ``prompt`` (median of ``repeats``)."""
    generate(model, [prompt] * batch, max_new_tokens=min(4, new_tokens))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate(model, [prompt] * batch, max_new_tokens=new_tokens)
        times.append(time.perf_counter() - t0)
    return batch * new_tokens / statistics.median(times)


def memory(model: Any, spec: dict[str, Any]) -> dict[str, int]:
    """Weights in bytes and KV-cache bytes per generated token (per sequence), fp32."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"weights_bytes": weights, "kv_bytes_per_token": 2 * spec["layers"] * spec["d_model"] * 4}
