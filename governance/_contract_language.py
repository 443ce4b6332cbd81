"""The language family's model contract: the tokenizer's use, the transformer, its safe artifact (one loader),
batched generation, and the monitoring signature — what serving logs about a generation and what drift
watches.

Pipelines write through this module, serving loads, generates and logs through it, drift reads through it.
torch and tokenizers load only inside the functions that need them; importing this module costs numpy.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Score:
    """What the model thought of one served text, untempered: the kept prompt's log-likelihood (summed over its
    tokens after the first) and each new token's log-probability, up to and including EOS."""

    prompt_sum: float
    prompt_scored: int
    tokens: tuple[float, ...]


def generate_scored(model: Any, prompts: list[list[int]], *, max_new_tokens: int,
                    temperature: float | list[float] = 0.0, seed: int | list[int] = 0, eos_id: int | None = None,
                    scored: bool = True, limits: list[int] | None = None) -> tuple[list[list[int]], list[Score]]:
    """New tokens for each prompt, all prompts in shared forward passes with a KV cache, and (``scored``) each
    row's ``Score``: what the monitoring signature logs. ``limits``: each row's own token budget
    (≤ ``max_new_tokens``), for serving's batches of requests that asked for different lengths; a row's prompt
    is cut to fit its own budget, so its result never depends on the rest of its batch.

    Prompts are left-padded and the padding masked; a prompt longer than the context keeps its end.
    Temperature 0 is greedy; otherwise sampling is reproducible for a seed. Temperature and seed may be
    given per prompt (concurrent requests batched by serving).
    """
    import torch

    context = model.context
    limits = list(limits) if limits is not None else [max_new_tokens] * len(prompts)
    if max_new_tokens < 1 or max_new_tokens >= context or any(not 1 <= n <= max_new_tokens for n in limits):
        raise InvalidInput(f"max_tokens must be between 1 and {context - 1} (the model's context is {context})")
    if not prompts or any(len(p) == 0 for p in prompts) or len(limits) != len(prompts):
        raise InvalidInput("every prompt needs at least one token (and one token budget)")
    temps = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature] * len(prompts)
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * len(prompts)
    if len(temps) != len(prompts) or len(seeds) != len(prompts):
        raise InvalidInput("give one temperature and one seed per prompt, or one for all")
    for t in temps:
        if t < 0 or not math.isfinite(t):
            raise InvalidInput(f"temperature must be ≥ 0, got {t}")
    prompts = [list(p[-(context - n):]) for p, n in zip(prompts, limits, strict=True)]
    device = next(model.parameters()).device
    idx, valid = _left_padded(prompts, device)
    # Sampling by inverting each row's CDF with one uniform number per row and step, drawn up front from
    # the row's own seed: a row's tokens never depend on the rest of its batch, and a step is vectorised.
    temp = torch.tensor(temps, dtype=torch.float32, device=device)[:, None]
    uniform = None
    if any(t > 0 for t in temps):
        uniform = torch.stack([torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(int(sd)))
                               for sd in seeds]).to(device)
    ragged = not bool(valid.all())
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    out = torch.empty(len(prompts), max_new_tokens, dtype=torch.long, device=device)
    steps: list[Any] = []
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    cache: list[Any] = []
    model.eval()
    with torch.no_grad():
        full = model(idx, positions=positions, mask=_prefill_mask(valid) if ragged else None, cache=cache)
        logits = full[:, -1]
        if scored:  # the prompt's own tokens, each under the positions before it (padding pairs masked)
            pairs = valid[:, :-1] & valid[:, 1:]
            lp = torch.log_softmax(full[:, :-1].float(), -1).gather(-1, idx[:, 1:, None])[..., 0]
            prompt_sum, prompt_n = (lp * pairs).sum(1).cpu().tolist(), pairs.sum(1).cpu().tolist()
        del full
        pos = positions[:, -1]
        for t in range(max_new_tokens):
            nxt = logits.argmax(-1) if uniform is None else sample_rows(logits, temp, uniform[:, t])
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            if scored:
                steps.append(torch.log_softmax(logits.float(), -1).gather(-1, nxt[:, None])[:, 0])
            out[:, t] = nxt
            if t == max_new_tokens - 1:
                break
            pos = (pos + 1).clamp(max=context - 1)  # a row past its own budget computes tokens nobody keeps
            valid = torch.cat([valid, torch.ones(len(prompts), 1, dtype=torch.bool, device=device)], dim=1)
            step_mask = valid[:, None, None, :] if ragged else None
            logits = model(nxt[:, None], positions=pos[:, None], mask=step_mask, cache=cache)[:, -1]
    rows = [r[:n] for r, n in zip(out.cpu().tolist(), limits, strict=True)]
    if eos_id is not None:
        rows = [r[:r.index(eos_id) + 1] if eos_id in r else r for r in rows]
    if not scored:
        return rows, []
    per_step = torch.stack(steps, 1).cpu().tolist()
    return rows, [Score(prompt_sum[i], int(prompt_n[i]), tuple(per_step[i][:len(r)])) for i, r in enumerate(rows)]


def _left_padded(prompts: list[list[int]], device: Any) -> tuple[Any, Any]:
    """Token ids left-padded to one width, and the mask of real (not padding) positions."""
    import torch

    width = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), width, dtype=torch.long)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, p in enumerate(prompts):
        idx[row, width - len(p):] = torch.tensor(p)
        valid[row, width - len(p):] = True
    return idx.to(device), valid.to(device)


def _prefill_mask(valid: Any) -> Any:
    """(B, 1, T, T) causal attention over real positions; a padded query attends to itself so no row is empty."""
    import torch

    width = valid.shape[1]
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool, device=valid.device))
    return ((causal[None] & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=valid.device)[None])[:, None]


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
    # watched first, one run (drift reads only those bytes); then what was served as the client asked for it
    logged=("prompt_tokens", "prompt_loglik_per_token", *(f"token_band_{k}" for k in range(BANDS)),
            "greedy_output_tokens", "greedy_eos", "greedy_loglik_per_token",
            "output_tokens", "finish_eos", "loglik_per_token", "temperature", "max_tokens"),
    output="output_tokens",
    watched=("prompt_tokens", "prompt_loglik_per_token", *(f"token_band_{k}" for k in range(BANDS)),
             "greedy_output_tokens", "greedy_eos", "greedy_loglik_per_token"),
    watch_output=False)


def monitor_tokens(context: int) -> int:
    """The greedy view's length: the first K new tokens, the same for every greedy request that asked for at
    least K and whose prompt fits beside its answer (the reference's prompts are cut to fit), so the reference's
    output columns compare with any such answer."""
    return max(1, min(16, context // 2))


def log_vector(prompt_ids: list[int], tokens: list[int], score: Score, *, eos_id: int | None, temperature: float,
               max_tokens: int, vocab: int, context: int) -> np.ndarray:
    """What serving logs about one generation (``SIGNATURE.logged``). Independent of the request's parameters
    while the prompt fits beside the answer (length + max_tokens ≤ context; a longer one is cut, and its
    likelihood is the kept part's): the prompt's length, its log-likelihood per token under the model and its
    token ids as shares in ``BANDS`` id ranges. The greedy
    view (a temperature-0 request for at least ``monitor_tokens`` tokens; NaN otherwise, and drift leaves NaN
    out): the first K tokens' count, whether EOS was among them, and the log-likelihood per token of the prompt
    and those K. Then the answer as served: its length, EOS, log-likelihood, and the request's parameters."""
    k = monitor_tokens(context)
    ids = np.minimum(np.asarray(prompt_ids, dtype=np.int64), max(vocab, 1) - 1)
    bands = np.bincount(ids * BANDS // max(vocab, 1), minlength=BANDS)[:BANDS] / max(len(prompt_ids), 1)

    def per_token(extra: tuple[float, ...]) -> float:
        n = score.prompt_scored + len(extra)
        return (score.prompt_sum + sum(extra)) / n if n else math.nan

    def ended(seq: list[int]) -> float:
        return 1.0 if seq and eos_id is not None and seq[-1] == eos_id else 0.0

    prompt = [len(prompt_ids), per_token(()), *bands]
    if temperature == 0 and max_tokens >= k:
        greedy = [min(len(tokens), k), ended(tokens[:k]), per_token(score.tokens[:k])]
    else:
        greedy = [math.nan] * 3
    served = [len(tokens), ended(tokens), per_token(score.tokens), temperature, max_tokens]
    vector = np.asarray([*prompt, *greedy, *served], dtype=np.float64)
    vector[~np.isfinite(vector)] = np.nan  # a non-finite likelihood is "not measured", never a huge number
    return vector.astype(LOG_DTYPE)


def reference(model: Any, tokenizer: Any, prompts: list[str], *, batch: int = 256) -> np.ndarray:
    """A reference profile's data: each prompt generated greedily for ``monitor_tokens`` tokens and logged
    exactly as serving logs a generation, the signature's watched columns, one row per prompt."""
    eos, vocab, context = tokenizer.token_to_id(EOS), tokenizer.get_vocab_size(), model.context
    k = monitor_tokens(context)
    ids = [p for p in (encode(tokenizer, text) for text in prompts) if p]
    if not ids:
        raise InvalidInput("no reference prompt has a token")
    rows = []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        outs, scores = generate_scored(model, chunk, max_new_tokens=k, eos_id=eos)
        rows += [log_vector(p, out, sc, eos_id=eos, temperature=0.0, max_tokens=k, vocab=vocab, context=context)
                 for p, out, sc in zip(chunk, outs, scores, strict=True)]
    return np.stack(rows).astype(np.float64)[:, SIGNATURE.positions]
