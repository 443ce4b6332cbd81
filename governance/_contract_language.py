"""The language family's model contract: the tokenizer's use, the transformer, its safe artifact (one loader),
batched generation, and the monitoring signature — what serving logs about a generation and what drift
watches.

Pipelines write through this module, serving loads, generates and logs through it, drift reads through it.
torch and tokenizers load only inside the functions that need them; importing this module costs numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from convergence.governance import _contract_io as safeio
from convergence.governance._contract_io import LOG_DTYPE, Signature
from convergence.platform.errors import InvalidInput

ARTIFACT_FORMAT = "convergence.language.lm.v2"  # safetensors + JSON header
LEGACY_FORMAT = "convergence.language.gpt.v1"  # first wave: torch.save, read only to convert
EOS = "<|endoftext|>"


def tokenizer_from_str(text: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def encode(tok: Any, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False).ids)


def decode(tok: Any, ids: Iterable[int]) -> str:
    # Special tokens are kept: a text that contains "<|endoftext|>" literally must come back as it went in.
    return str(tok.decode(list(ids), skip_special_tokens=False))


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


def generate(model: Any, prompts: list[list[int]], *, max_new_tokens: int, temperature: float | list[float] = 0.0,
             seed: int | list[int] = 0, eos_id: int | None = None) -> list[list[int]]:
    """New tokens for each prompt (``generate_scored`` without the scores)."""
    return generate_scored(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                           eos_id=eos_id, scored=False)[0]


def generate_scored(model: Any, prompts: list[list[int]], *, max_new_tokens: int,
                    temperature: float | list[float] = 0.0, seed: int | list[int] = 0, eos_id: int | None = None,
                    scored: bool = True, limits: list[int] | None = None) -> tuple[list[list[int]], list[float]]:
    """New tokens for each prompt, all prompts in shared forward passes with a KV cache, and (``scored``) each
    row's mean log-likelihood per token of the served text (the prompt as kept, then the new tokens up to EOS)
    under the model itself, untempered: what the monitoring signature logs. ``limits``: each row's own token
    budget (≤ ``max_new_tokens``), for serving's batches of requests that asked for different lengths.

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
        full = model(idx, positions=positions, mask=mask, cache=cache)
        logits = full[:, -1]
        if scored:  # the prompt's own tokens, each under the positions before it (padding pairs masked)
            pairs = valid[:, :-1] & valid[:, 1:]
            lp = torch.log_softmax(full[:, :-1].float(), -1).gather(-1, idx[:, 1:, None])[..., 0]
            total, count = (lp * pairs).sum(1), pairs.sum(1).float()
        del full
        cap = None if limits is None else torch.tensor(limits, device=device)
        pos = positions[:, -1]
        for t in range(max_new_tokens):
            nxt = logits.argmax(-1) if uniform is None else sample_rows(logits, temp, uniform[:, t])
            live = ~done if cap is None else ~done & (cap > t)  # a row's EOS counts once, the filler never
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            if scored:
                step = torch.log_softmax(logits.float(), -1).gather(-1, nxt[:, None])[:, 0]
                total, count = total + step * live, count + live.float()
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
    return rows, ((total / count.clamp(min=1)).cpu().tolist() if scored else [])


def sample_rows(logits: Any, temp: Any, u: Any) -> Any:
    """One token per row: greedy where the row's temperature is 0, else drawn from softmax(logits / T) by
    inverting its CDF at the row's uniform number ``u``."""
    import torch

    cdf = torch.softmax(logits.float() / temp.clamp(min=1e-6), dim=-1).cumsum(-1)
    drawn = torch.searchsorted(cdf, (u[:, None] * cdf[:, -1:]).contiguous()).squeeze(1).clamp(max=cdf.shape[-1] - 1)
    return torch.where(temp[:, 0] > 0, drawn, logits.argmax(-1))


def save_artifact(path: Path, *, model: Any, spec: dict[str, Any], tokenizer: Any, role: str,
                  meta: dict[str, Any]) -> Path:
    """Weights (safetensors), architecture and the tokenizer (JSON) in one safe file, so serving needs nothing else."""
    module = model.module if hasattr(model, "module") else model
    header = {"role": role, "arch": spec, "tokenizer": tokenizer.to_str(), "meta": meta}
    return safeio.save(path, fmt=ARTIFACT_FORMAT, header=header, tensors=dict(module.state_dict()))


def load_artifact(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model on CPU in eval mode, tokenizer, the rest of the header) from a safe artifact."""
    tensors, header = safeio.load(path, fmt=ARTIFACT_FORMAT)
    with safeio.declared(path, "model"):
        model = build(header["arch"])
        model.load_state_dict(tensors)
        tokenizer = tokenizer_from_str(header.pop("tokenizer"))
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


# --- the monitoring signature ---------------------------------------------------------------------

BANDS = 8  # the prompt's token ids, as shares in equal id ranges (byte-level ids low, learned merges high)
SIGNATURE = Signature(
    logged=("prompt_tokens", "output_tokens", "finish_eos", "loglik_per_token", "temperature", "max_tokens",
            *(f"token_band_{k}" for k in range(BANDS))),
    output="output_tokens",
    watched=("prompt_tokens", "finish_eos", "loglik_per_token", *(f"token_band_{k}" for k in range(BANDS))))


def log_vector(prompt_ids: list[int], tokens: list[int], *, eos_id: int | None, loglik: float, temperature: float,
               max_tokens: int, vocab: int) -> np.ndarray:
    """What serving logs about one generation (``SIGNATURE.logged``): prompt and output lengths, whether it ended
    at EOS, the served text's mean log-likelihood per token, the request's parameters and the prompt's token
    ids as shares in ``BANDS`` id ranges. The logged output is the number of tokens generated."""
    bands = np.bincount(np.minimum(np.asarray(prompt_ids, dtype=np.int64) * BANDS // max(vocab, 1), BANDS - 1),
                        minlength=BANDS) / max(len(prompt_ids), 1)
    eos = 1.0 if tokens and eos_id is not None and tokens[-1] == eos_id else 0.0
    head = [len(prompt_ids), len(tokens), eos, loglik if math.isfinite(loglik) else -1e4, temperature, max_tokens]
    return np.asarray([*head, *bands], dtype=LOG_DTYPE)


def reference(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, batch: int = 64) -> np.ndarray:
    """A reference profile's data: each prompt generated greedily and logged exactly as serving logs it, the
    signature's watched columns then the output, one row per prompt."""
    eos, vocab = tokenizer.token_to_id(EOS), tokenizer.get_vocab_size()
    ids = [encode(tokenizer, text) for text in prompts]
    ids = [p for p in ids if p]
    if not ids:
        raise InvalidInput("no reference prompt has a token")
    rows = []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        outs, scores = generate_scored(model, chunk, max_new_tokens=max_new_tokens, eos_id=eos)
        rows += [log_vector(p, out, eos_id=eos, loglik=lp, temperature=0.0, max_tokens=max_new_tokens, vocab=vocab)
                 for p, out, lp in zip(chunk, outs, scores, strict=True)]
    logged = np.stack(rows).astype(np.float64)
    return np.column_stack([logged[:, [p for p in SIGNATURE.positions if p >= 0]],
                            logged[:, SIGNATURE.logged.index(SIGNATURE.output)]])
