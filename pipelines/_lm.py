"""The language models: a byte-level BPE tokenizer, a small decoder-only transformer (GPT-style, pre-LN,
tied embeddings), batched generation with a KV cache, held-out perplexity, and the artifact format.

The same module serves teacher and student; only the sizes differ. Generation left-pads a batch of
prompts and masks the padding, so concurrent requests of different lengths share forward passes.
CUDA is used when ``torch.cuda.is_available()`` (bf16 autocast in training), CPU otherwise.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from convergence.pipelines import _safeio as safeio
from convergence.platform.errors import InvalidInput

ARTIFACT_FORMAT = "convergence.language.lm.v2"  # safetensors + JSON header
LEGACY_FORMAT = "convergence.language.gpt.v1"  # first wave: torch.save, read only to convert
EOS = "<|endoftext|>"


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


def tokenizer_from_str(text: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def encode(tok: Any, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False).ids)


def decode(tok: Any, ids: Iterable[int]) -> str:
    # Special tokens are kept: a text that contains "<|endoftext|>" literally must come back as it went in.
    return str(tok.decode(list(ids), skip_special_tokens=False))


def encode_documents(tok: Any, texts: list[str]) -> np.ndarray:
    """The documents as one token stream, each followed by the end-of-text token."""
    eos = tok.token_to_id(EOS)
    stream: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        stream.extend(enc.ids)
        stream.append(eos)
    return np.asarray(stream, dtype=np.int32)


# --- the transformer ------------------------------------------------------------------------------

def arch(*, vocab: int, context: int, d_model: int, layers: int, heads: int, dropout: float = 0.0) -> dict[str, Any]:
    return {"vocab": vocab, "context": context, "d_model": d_model, "layers": layers, "heads": heads,
            "dropout": dropout}


def build(spec: dict[str, Any]) -> Any:
    """A GPT from an arch dict (a function, so torch is imported only when a model is built)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self, d: int, heads: int, dropout: float) -> None:
            super().__init__()
            self.heads, self.dropout = heads, dropout
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.drop = nn.Dropout(dropout)

        def forward(self, x: Any, mask: Any = None, past: Any = None) -> tuple[Any, Any]:
            B, T, C = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            drop = self.dropout if self.training else 0.0
            if mask is None:  # training and single-sequence prefill: plain causal attention
                y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None and T > 1, dropout_p=drop)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
            x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))
            x = x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))
            return x, (k, v)

    class GPT(nn.Module):
        def __init__(self, vocab: int, context: int, d_model: int, layers: int, heads: int, dropout: float) -> None:
            super().__init__()
            self.context = context
            self.tok, self.pos = nn.Embedding(vocab, d_model), nn.Embedding(context, d_model)
            self.blocks = nn.ModuleList(Block(d_model, heads, dropout) for _ in range(layers))
            self.ln = nn.LayerNorm(d_model)
            self.apply(self._init)

        @staticmethod
        def _init(m: Any) -> None:
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

        def forward(self, idx: Any, positions: Any = None, mask: Any = None, cache: Any = None) -> Any:
            """Logits for every position; with ``cache`` (a list to fill or extend) also the new keys/values."""
            if positions is None:
                positions = torch.arange(idx.shape[1], device=idx.device)
            x = self.tok(idx) + self.pos(positions)
            for i, block in enumerate(self.blocks):
                past = cache[i] if cache is not None and len(cache) > i else None
                x, kv = block(x, mask, past)
                if cache is not None:
                    if past is not None:
                        cache[i] = kv
                    else:
                        cache.append(kv)
            return self.ln(x) @ self.tok.weight.T  # tied output embedding

    return GPT(spec["vocab"], spec["context"], spec["d_model"], spec["layers"], spec["heads"], spec.get("dropout", 0.0))


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


def generate(model: Any, prompts: list[list[int]], *, max_new_tokens: int, temperature: float | list[float] = 0.0,
             seed: int | list[int] = 0, eos_id: int | None = None) -> list[list[int]]:
    """New tokens for each prompt, all prompts in shared forward passes with a KV cache.

    Prompts are left-padded and the padding masked; a prompt longer than the context keeps its end.
    Temperature 0 is greedy; otherwise sampling is reproducible for a seed. Temperature and seed may be
    given per prompt (concurrent requests batched by serving), and a row's result does not depend on
    the other rows of its batch.
    """
    import torch

    context = model.context
    if max_new_tokens < 1 or max_new_tokens >= context:
        raise InvalidInput(f"max_tokens must be between 1 and {context - 1} (the model's context is {context})")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InvalidInput("every prompt needs at least one token")
    temps = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature] * len(prompts)
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * len(prompts)
    if len(temps) != len(prompts) or len(seeds) != len(prompts):
        raise InvalidInput("give one temperature and one seed per prompt, or one for all")
    for t in temps:
        if t < 0 or not math.isfinite(t):
            raise InvalidInput(f"temperature must be ≥ 0, got {t}")
    keep = context - max_new_tokens
    prompts = [list(p[-keep:]) for p in prompts]
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), width, dtype=torch.long)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, p in enumerate(prompts):
        idx[row, width - len(p):] = torch.tensor(p)
        valid[row, width - len(p):] = True
    idx, valid = idx.to(device), valid.to(device)
    # Sampling by inverting each row's CDF with one uniform number per row and step, drawn up front from
    # the row's own seed: a row's tokens never depend on the rest of its batch, and a step is vectorised.
    temp = torch.tensor(temps, dtype=torch.float32, device=device)[:, None]
    uniform = None
    if any(t > 0 for t in temps):
        uniform = torch.stack([torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(int(sd)))
                               for sd in seeds]).to(device)
    ragged = not bool(valid.all())
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    if ragged:
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool, device=device))
        mask = (causal[None] & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)[None]
        mask = mask[:, None]  # (B, 1, T, T); a padded query attends to itself so no row is empty
    else:
        mask = None
    out = torch.empty(len(prompts), max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    cache: list[Any] = []
    model.eval()
    with torch.no_grad():
        logits = model(idx, positions=positions, mask=mask, cache=cache)[:, -1]
        pos = positions[:, -1]
        for t in range(max_new_tokens):
            nxt = logits.argmax(-1) if uniform is None else sample_rows(logits, temp, uniform[:, t])
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out[:, t] = nxt
            if t == max_new_tokens - 1:
                break
            pos = pos + 1
            valid = torch.cat([valid, torch.ones(len(prompts), 1, dtype=torch.bool, device=device)], dim=1)
            step_mask = valid[:, None, None, :] if ragged else None
            logits = model(nxt[:, None], positions=pos[:, None], mask=step_mask, cache=cache)[:, -1]
    rows = out.cpu().tolist()
    if eos_id is not None:
        rows = [r[:r.index(eos_id) + 1] if eos_id in r else r for r in rows]
    return rows


def sample_rows(logits: Any, temp: Any, u: Any) -> Any:
    """One token per row: greedy where the row's temperature is 0, else drawn from softmax(logits / T) by
    inverting its CDF at the row's uniform number ``u``."""
    import torch

    cdf = torch.softmax(logits.float() / temp.clamp(min=1e-6), dim=-1).cumsum(-1)
    drawn = torch.searchsorted(cdf, (u[:, None] * cdf[:, -1:]).contiguous()).squeeze(1).clamp(max=cdf.shape[-1] - 1)
    return torch.where(temp[:, 0] > 0, drawn, logits.argmax(-1))


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


# --- artifacts ------------------------------------------------------------------------------------

def save_artifact(path: Path, *, model: Any, spec: dict[str, Any], tokenizer: Any, role: str,
                  meta: dict[str, Any]) -> Path:
    """Weights (safetensors), architecture and the tokenizer (JSON) in one safe file, so serving needs nothing else."""
    module = model.module if hasattr(model, "module") else model
    header = {"role": role, "arch": spec, "tokenizer": tokenizer.to_str(), "meta": meta}
    return safeio.save(path, fmt=ARTIFACT_FORMAT, header=header, tensors=dict(module.state_dict()))


def load_artifact(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model on CPU in eval mode, tokenizer, the rest of the header) from a safe artifact."""
    from convergence.platform.errors import UnsafeArtifact

    tensors, header = safeio.load(path, fmt=ARTIFACT_FORMAT)
    try:
        model = build(header["arch"])
        model.load_state_dict(tensors)
        tokenizer = tokenizer_from_str(header.pop("tokenizer"))
    except Exception as exc:  # noqa: BLE001 - torch's and tokenizers' errors for weights that do not fit
        raise UnsafeArtifact(f"{Path(path).name} does not hold the model its header declares: "
                             f"{type(exc).__name__}") from None
    return model.eval(), tokenizer, {**header, "format": ARTIFACT_FORMAT}


def read_legacy_artifact(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """A first-wave ``torch.save`` artifact, read weights-only (never code), for ``cvg models convert`` alone."""
    import torch

    from convergence.platform.errors import UnsafeArtifact

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not its format
        raise UnsafeArtifact(f"{Path(path).name} is not a first-wave language artifact: {type(exc).__name__}") from None
    if not isinstance(blob, dict) or blob.get("format") != LEGACY_FORMAT:
        raise UnsafeArtifact(f"{Path(path).name} is not a {LEGACY_FORMAT} artifact")
    model = build(blob["arch"])
    model.load_state_dict(blob.pop("state_dict"))
    return model.eval(), tokenizer_from_str(blob["tokenizer"]), blob
