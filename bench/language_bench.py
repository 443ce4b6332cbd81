"""Language models benchmark: teacher vs distilled student vs label-only student on the real corpora.

    .venv/bin/python bench/language_bench.py [--set '{"train": {"teacher_steps": 400}}']

The whole language pipeline (Ray Train teacher, students as Ray tasks) with its default configuration,
one run, into a throw-away CVG_HOME; then held-out perplexity on the 2010–2021 State of the Union
addresses and on the Reuters-21578 slice, generation tokens/s at batch 1 and batch 16 (greedy, KV
cache, median of repeats) and parameters, side by side, with the issue's goals. Prints a table and
writes bench/results/language.json. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from _people import principal

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", default="{}", help="Config overrides as JSON.")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="cvg-lm-bench-")
    os.environ["CVG_HOME"] = home
    os.environ.pop("CVG_DATABASE_URL", None)
    from convergence.pipelines import parse_config, run_language
    from convergence.platform import migrate

    migrate.upgrade()
    cfg = parse_config({**json.loads(args.set), "eval": {"gen_repeats": 5}}, "language")
    summary = run_language(cfg, principal=principal("bench", "registrant"),
                           progress=lambda s, state, d: print(f"  {state:6} {s} {d}"))
    ppl, speed, size = summary["perplexity"], summary["speed"], summary["size"]
    batched = f"tokens_per_s_batch{cfg.eval.batch}"
    head = f"tok/s b{cfg.eval.batch}"
    print(f"\n{'model':<11} {'params':>10} {'ppl SOTU':>9} {'ppl Reuters':>12} {'tok/s b1':>9} {head:>10}")
    for key in ("teacher", "student", "label_only"):
        print(f"{key:<11} {size[key]['params']:>10,} {ppl[key]['sotu_holdout']:>9.1f} {ppl[key]['reuters']:>12.1f} "
              f"{speed[key]['tokens_per_s_batch1']:>9.0f} {speed[key][batched]:>10.0f}")
    t, s, lo = (ppl[k]["sotu_holdout"] for k in ("teacher", "student", "label_only"))
    ratios = {
        "param_ratio": size["teacher"]["params"] / size["student"]["params"],
        "speedup_batch1": speed["student"]["tokens_per_s_batch1"] / speed["teacher"]["tokens_per_s_batch1"],
        "speedup_batched": speed["student"][batched] / speed["teacher"][batched],
        "ppl_ratio_sotu": s / t,
        "ppl_ratio_reuters": ppl["student"]["reuters"] / ppl["teacher"]["reuters"],
        "distilled_vs_label_only_sotu": s / lo,
        "distilled_vs_label_only_reuters": ppl["student"]["reuters"] / ppl["label_only"]["reuters"],
        "batched_vs_batch1_student": speed["student"][batched] / speed["student"]["tokens_per_s_batch1"],
    }
    print(f"\nteacher ÷ student parameters   {ratios['param_ratio']:.2f}x   (goal ≥ 4)")
    print(f"student ÷ teacher tokens/s b1  {ratios['speedup_batch1']:.2f}x   (goal ≥ 3)")
    print(f"student ÷ teacher perplexity   {ratios['ppl_ratio_sotu']:.3f}   "
          f"(goal ≤ 1.2; Reuters {ratios['ppl_ratio_reuters']:.3f})")
    print(f"distilled ÷ label-only ppl     {ratios['distilled_vs_label_only_sotu']:.3f}   (goal < 1; Reuters "
          f"{ratios['distilled_vs_label_only_reuters']:.3f})")
    print(f"run {summary['run_id']} took {summary['seconds']} s: {summary['timings']}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "language.json").write_text(json.dumps({"config": cfg.to_dict(), "summary": summary, "ratios": ratios},
                                                  indent=2, default=str))


if __name__ == "__main__":
    main()
