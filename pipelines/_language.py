"""The language pipeline's steps: corpus → tokenizer → teacher (Ray Train) → distilled and label-only
students (parallel Ray tasks) → held-out perplexity, generation speed, samples → gates.

Each step is a plain function of plain inputs, so the local Ray runner, ``cvg pipelines step language``
(what Kubeflow's components run) and the tests call the same code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from convergence.pipelines import _lm as lm
from convergence.pipelines import _progress as progress
from convergence.pipelines._boundary import bounded
from convergence.pipelines._config import LanguageConfig
from convergence.pipelines._corpus import Corpus
from convergence.pipelines._runner import fit_on_ray_train, ray_get_all, ray_node, report_checkpoint
from convergence.platform.errors import InvalidInput

STEPS = ("load_corpus", "tokenize", "train_teacher", "distill_student", "evaluate_register")
MODEL_KEYS = ("teacher", "student", "label_only")


@dataclasses.dataclass
class Tokenized:
    """The tokenizer and the three token streams it produced."""

    tokenizer: Any
    train: np.ndarray
    holdout: np.ndarray
    reuters: np.ndarray

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "holdout": len(self.holdout), "reuters": len(self.reuters)}


def tokenize(corpus: Corpus, cfg: LanguageConfig) -> Tokenized:
    """Train the BPE on the training split only, then encode every split."""
    texts = [d.text for d in corpus.train]
    tok = lm.train_tokenizer(texts, vocab_size=cfg.tokenizer.vocab_size, min_frequency=cfg.tokenizer.min_frequency)
    out = Tokenized(tok, lm.encode_documents(tok, texts), lm.encode_documents(tok, [d.text for d in corpus.holdout]),
                    lm.encode_documents(tok, [d.text for d in corpus.reuters]) if corpus.reuters else
                    np.zeros(0, dtype=np.int32))
    lm.check_stream(out.train, cfg.train.context, "training split")
    lm.check_stream(out.holdout, cfg.train.context, "held-out split")
    return out


def specs(cfg: LanguageConfig, vocab: int) -> dict[str, dict[str, Any]]:
    t, s, ctx = cfg.teacher, cfg.student, cfg.train.context
    student = lm.arch(vocab=vocab, context=ctx, d_model=s.d_model, layers=s.layers, heads=s.heads)
    return {"teacher": lm.arch(vocab=vocab, context=ctx, d_model=t.d_model, layers=t.layers, heads=t.heads,
                               dropout=cfg.train.dropout),
            "student": student, "label_only": student}


# --- the teacher on Ray Train ----------------------------------------------------------------------

def _teacher_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: DDP, each rank drawing its own seeded windows; checkpoints on the way."""
    import torch
    from ray import train
    from ray.train.torch import get_device, prepare_model
    from torch.nn import functional as F

    torch.set_num_threads(max(1, config["threads"]))
    torch.manual_seed(config["seed"])  # every rank builds the same initial weights
    ctx = train.get_context()
    rank = ctx.get_world_rank()
    device = get_device()
    model = prepare_model(lm.build(config["arch"]))
    opt = lm.optimizer(model, config["lr"])
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + rank)
    amp = config["amp"] and device.type == "cuda"
    steps, every = config["steps"], max(1, config["steps"] // 4)
    tell_every = max(1, steps // 20)
    running = 0.0
    for step in range(steps):
        model.train()
        for group in opt.param_groups:
            group["lr"] = lm.lr_at(step, total=steps, warmup=config["warmup"], lr=config["lr"])
        w = lm.batch_windows(config["tokens"], context=config["context"], batch=config["batch"], gen=gen).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(w[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = float(loss.detach()) if step == 0 else 0.9 * running + 0.1 * float(loss.detach())
        if rank == 0 and ((step + 1) % tell_every == 0 or step + 1 == steps):
            progress.tell(config.get("board"), "train_teacher", f"step {step + 1}/{steps}, loss {running:.3f}")
        if (step + 1) % every == 0 or step + 1 == steps:
            report_checkpoint({"step": step + 1, "loss": running}, model, rank)


def train_teacher_ray(tokens: np.ndarray, spec: dict[str, Any], cfg: LanguageConfig, storage: Path,
                      run_name: str, *, board: Any = None) -> tuple[Any, dict[str, Any]]:
    """Train the teacher with Ray Train's TorchTrainer; return it (CPU, eval mode) and its last metrics. Rank 0
    tells ``board`` its step and loss."""
    t = cfg.train
    state, metrics = fit_on_ray_train(
        _teacher_loop, {"tokens": tokens, "arch": spec, "steps": t.teacher_steps, "batch": t.batch_size,
                        "context": t.context, "lr": t.lr, "warmup": t.warmup_steps, "seed": cfg.seed, "amp": t.amp,
                        "threads": 1, "board": board},
        workers=t.workers, storage=storage, run_name=run_name)
    model = lm.build(spec)
    model.load_state_dict(state)
    return model.eval(), metrics


# --- students: distilled and label-only, as parallel Ray tasks ---------------------------------------

def train_student(tokens: np.ndarray, spec: dict[str, Any], teacher: dict[str, Any] | None,
                  cfg: LanguageConfig, board: Any = None, who: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the student; with ``teacher`` ({"arch", "state"}) by distillation (KL to its softened logits plus
    cross-entropy), without it on the next token only. Returns the state dict, the final loss and the Ray node
    that trained it."""
    import torch
    from torch.nn import functional as F

    torch.set_num_threads(1)
    t = cfg.train
    device = lm.pick_device()
    teacher_net = None
    if teacher is not None:
        teacher_net = lm.build(teacher["arch"])
        teacher_net.load_state_dict(teacher["state"])
        teacher_net.to(device).eval()
    torch.manual_seed(cfg.seed + 1)  # both students start from the same weights: only the target differs
    model = lm.build(spec).to(device)
    opt = lm.optimizer(model, t.student_lr)
    gen = torch.Generator().manual_seed(cfg.seed + 2)  # ... and see the same windows
    T, alpha = t.temperature, t.distill_alpha
    running = 0.0
    for step in range(t.student_steps):
        model.train()
        for group in opt.param_groups:
            group["lr"] = lm.lr_at(step, total=t.student_steps, warmup=t.warmup_steps, lr=t.student_lr)
        w = lm.batch_windows(tokens, context=t.context, batch=t.batch_size, gen=gen).to(device)
        logits = model(w[:, :-1])
        flat = logits.reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(flat, w[:, 1:].reshape(-1))
        if teacher_net is not None:
            with torch.no_grad():
                soft = F.log_softmax(teacher_net(w[:, :-1]).reshape(-1, flat.shape[-1]) / T, dim=-1)
            kl = F.kl_div(F.log_softmax(flat / T, dim=-1), soft, log_target=True, reduction="batchmean") * T * T
            loss = alpha * kl + (1 - alpha) * loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = float(loss.detach()) if step == 0 else 0.9 * running + 0.1 * float(loss.detach())
        if (step + 1) % max(1, t.student_steps // 20) == 0 or step + 1 == t.student_steps:
            progress.tell(board, "distill_student", f"step {step + 1}/{t.student_steps}, loss {running:.3f}", who)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return state, {"loss": running, "steps": t.student_steps, "distilled": teacher is not None, "ray_node": ray_node()}


bounded_student = bounded("distill_student")(train_student)


def train_students(tokens: np.ndarray, teacher: Any, spec_map: dict[str, dict[str, Any]], cfg: LanguageConfig,
                   *, parallel: bool = True, board: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The distilled student and its label-only control, side by side on Ray (or in a loop)."""
    teacher_blob = {"arch": spec_map["teacher"], "state": {k: v.cpu() for k, v in teacher.state_dict().items()}}
    jobs = {"student": teacher_blob, "label_only": None}
    if parallel:
        import ray
        remote = ray.remote(num_cpus=1)(bounded_student)
        tokens_ref = ray.put(tokens)
        refs = [remote.remote(tokens_ref, spec_map[k], blob, cfg, board, k) for k, blob in jobs.items()]
        results = dict(zip(jobs, ray_get_all(refs, "distill_student"), strict=True))
    else:
        results = {k: bounded_student(tokens, spec_map[k], blob, cfg, board, k) for k, blob in jobs.items()}
    models, metrics = {}, {}
    for key, (state, m) in results.items():
        net = lm.build(spec_map[key])
        net.load_state_dict(state)
        models[key], metrics[key] = net.eval(), m
    return models, metrics


# --- evaluation and gates -------------------------------------------------------------------------

def evaluate(models: dict[str, Any], spec_map: dict[str, dict[str, Any]], tokens: Tokenized,
             cfg: LanguageConfig) -> dict[str, Any]:
    """Held-out perplexity on both slices, tokens/s at batch 1 and batch N, size, and fixed-seed samples."""
    e, ctx = cfg.eval, cfg.train.context
    tok = tokens.tokenizer
    prompt = lm.encode(tok, e.prompts[0]) if e.prompts else [tok.token_to_id(lm.EOS)]
    new_tokens = min(e.gen_tokens, ctx - 1)
    result: dict[str, Any] = {"perplexity": {}, "speed": {}, "size": {}, "samples": {}}
    for key, model in models.items():
        ppl = {"sotu_holdout": lm.perplexity(model, tokens.holdout[:e.eval_tokens + 1], context=ctx)}
        if len(tokens.reuters) > ctx + 1:
            ppl["reuters"] = lm.perplexity(model, tokens.reuters[:e.eval_tokens + 1], context=ctx)
        result["perplexity"][key] = ppl
        result["size"][key] = {"params": lm.n_params(model), **lm.memory(model, spec_map[key])}
        if key == "label_only":  # the same network as the student: same speed
            result["speed"][key] = result["speed"]["student"]
            continue
        result["speed"][key] = {
            "tokens_per_s_batch1": lm.tokens_per_second(model, prompt, batch=1, new_tokens=new_tokens,
                                                        repeats=e.gen_repeats),
            f"tokens_per_s_batch{e.batch}": lm.tokens_per_second(model, prompt, batch=e.batch, new_tokens=new_tokens,
                                                                 repeats=e.gen_repeats)}
        result["samples"][key] = [
            {"prompt": p, "temperature": 0.8, "seed": cfg.seed,
             "text": lm.decode(tok, lm.generate(model, [lm.encode(tok, p) or prompt],
                                                max_new_tokens=min(e.sample_tokens, ctx - 1),
                                                temperature=0.8, seed=cfg.seed)[0])}
            for p in e.prompts]
    result["gates"] = gate(result, cfg)
    return result


def gate(result: dict[str, Any], cfg: LanguageConfig) -> dict[str, Any]:
    """Check the thresholds in ``cfg.gates``; every check is reported, passed or not."""
    g, ppl, size, speed = cfg.gates, result["perplexity"], result["size"], result["speed"]
    checks = [
        ("student / teacher held-out perplexity", ppl["student"]["sotu_holdout"] / ppl["teacher"]["sotu_holdout"],
         "<=", g.max_ppl_ratio),
        ("teacher / student parameters", size["teacher"]["params"] / size["student"]["params"], ">=",
         g.min_param_ratio),
        ("student / teacher tokens/s at batch 1",
         speed["student"]["tokens_per_s_batch1"] / speed["teacher"]["tokens_per_s_batch1"], ">=", g.min_speedup),
    ]
    if g.distill_must_help:
        checks.append(("distilled / label-only perplexity",
                       ppl["student"]["sotu_holdout"] / ppl["label_only"]["sotu_holdout"], "<", 1.0))
    ops = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t}
    results = [{"check": name, "value": float(value), "op": op, "threshold": limit,
                "passed": bool(ops[op](value, limit))} for name, value, op, limit in checks]
    return {"passed": all(r["passed"] for r in results), "checks": results,
            "failed": [f"{r['check']} = {r['value']:.4g}, needs {r['op']} {r['threshold']}" for r in results
                       if not r["passed"]]}


# --- the reference traffic of a language profile ----------------------------------------------------

# > 1,000 rows (Wasserstein, not K-S), and enough that the reference's own sampling noise stays well under the
# 0.1 threshold: 13 columns of unshifted traffic against 1,200 reference rows flagged one in a third of trials
REFERENCE_PROMPTS = 3000


def prompts_from(stream: np.ndarray, tokenizer: Any, *, n: int, seed: int, lengths: tuple[int, int] = (8, 40)) -> list[str]:
    """``n`` prompts cut from a token stream (spans of 8–40 tokens, document ends dropped) and decoded to text:
    what a language profile's reference traffic is (held-out text), or a test's traffic from another corpus."""
    eos = tokenizer.token_to_id(lm.EOS)
    rng = np.random.default_rng(seed)
    if len(stream) <= lengths[1]:
        raise InvalidInput(f"a token stream of {len(stream)} tokens is too short to cut prompts from")
    prompts = []
    for start, size in zip(rng.integers(0, len(stream) - lengths[1], n), rng.integers(lengths[0], lengths[1] + 1, n),
                           strict=True):
        span = [int(t) for t in stream[start:start + size] if t != eos]
        text = lm.decode(tokenizer, span).strip()
        prompts.append(text or lm.decode(tokenizer, [int(t) for t in stream[:lengths[0]] if t != eos]))
    return prompts


def prompt_lengths(context: int) -> tuple[int, int]:
    """Prompt spans (in tokens) that fit the model beside its greedy view: 8–40 tokens, at most the context less
    the view and a margin for re-tokenising the text, so the prompt the model sees is the whole prompt."""
    from convergence.governance import contract

    hi = max(2, min(40, context - contract.language.monitor_tokens(context) - 2))
    return min(8, hi), hi


def reference_profiles(models: dict[str, Any], tokenizer: Any, holdout: np.ndarray, keys: tuple[str, ...],
                       seed: int) -> dict[str, np.ndarray]:
    """Each registered model's reference data, logged through the model contract exactly as serving logs a
    greedy generation, over prompts from the held-out split."""
    from convergence.governance import contract

    context = next(iter(models.values())).context
    prompts = prompts_from(holdout, tokenizer, n=REFERENCE_PROMPTS, seed=seed, lengths=prompt_lengths(context))
    return {key: contract.language.reference(models[key], tokenizer, prompts) for key in keys}
