"""Does feedback on some prompts improve decisions on new prompts of the same kind?

Offline, with the decision code `auto` runs (`selector_model.posterior.choose`, the
evidence of `selector_model.evidence`, the kinds of `selector_model.kind`) on the
deduplicated LLMRouter test split: each seed splits the prompts in two halves; the
first half is decided three times over (exploring at `--exploration`), each answer's
recorded score fed back as its rating; then the second half is decided without
exploring, before and after that feedback. auto:best (no cost term).

`--prior artifact` scores with the shipped artifact, which was trained on these nine
models; `--prior flat` gives every model P = 0.5 and treats it as unknown to the
artifact: a fleet the selector knows nothing about.

    python -m benchmarks.feedback_replay [--prior artifact|flat] [--seeds 10]
"""

from __future__ import annotations

import argparse

import numpy as np

from selector_model import artifact as artifact_module
from selector_model.evidence import Evidence
from selector_model.kind import kind_of
from selector_model.policy import rank
from selector_model.posterior import KNOWN_PRIOR_STRENGTH, OPTIMISM, PRIOR_STRENGTH, choose
from selector_model.scorer import Scorer
from training.data import load_llmrouter, prompt_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", choices=("artifact", "flat"), default="artifact")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--exploration", type=float, default=0.3)
    parser.add_argument("--prior-strength", type=float, default=PRIOR_STRENGTH)
    parser.add_argument("--known-prior-strength", type=float, default=KNOWN_PRIOR_STRENGTH)
    parser.add_argument(
        "--model-level",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="a model's outcomes on one kind also move it on the others (learning.model_level)",
    )
    parser.add_argument(
        "--optimism",
        type=float,
        default=OPTIMISM,
        help="posterior standard deviations added once there is evidence (learning.optimism)",
    )
    args = parser.parse_args()

    dataset = load_llmrouter()
    candidates = [m.candidate() for m in dataset.models]
    names = [c.name for c in candidates]
    requests = [prompt_request(p.text) for p in dataset.test]
    kinds = [kind_of(r) for r in requests]
    scores = np.array([[p.scores[m.dataset_name] for m in dataset.models] for p in dataset.test])
    if args.prior == "flat":
        prior = np.full_like(scores, 0.5)
        known: set[str] = set()
    else:
        scorer = Scorer(artifact_module.resolve(""))
        if not scorer.reload() or scorer.artifact is None:
            raise SystemExit(f"no usable shipped artifact: {scorer.error}")
        prior = np.array([scorer.p_success(scorer.artifact, r, candidates) for r in requests])
        known = set(names)
    print(
        f"{len(requests)} prompts, {len(names)} models, prior {args.prior}; "
        f"best single {scores.mean(0).max():.3f}, oracle {scores.max(1).mean():.3f}"
    )

    def decide(i: int, evidence: Evidence, exploration: float, rng: np.random.Generator) -> int:
        ranking = rank(names, list(prior[i]), [0.0] * len(names), 0.0, known)
        chosen = choose(
            ranking,
            evidence.of(kinds[i]),
            exploration,
            rng,
            prior_strength=args.prior_strength,
            known_prior_strength=args.known_prior_strength,
            kinds=evidence.table if args.model_level else None,
            optimism=args.optimism,
        ).chosen
        return names.index(chosen.name)

    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(requests))
        taught, held = order[: len(order) // 2], order[len(order) // 2 :]
        evidence = Evidence()
        before = np.mean([scores[i, decide(i, evidence, 0.0, rng)] for i in held])
        for _ in range(args.passes):
            for i in taught:
                m = decide(i, evidence, args.exploration, rng)
                evidence.update(kinds[i], names[m], scores[i, m], prior[i, m])
        after = np.mean([scores[i, decide(i, evidence, 0.0, rng)] for i in held])
        best = scores[held].mean(0).max()
        rows.append((best, before, after))
        print(f"seed {seed}: held-out half: best single {best:.3f}, {before:.3f} -> {after:.3f}")
    best, before, after = np.mean(rows, axis=0)
    print(f"mean: best single {best:.3f}, no feedback {before:.3f}, after feedback {after:.3f}")


if __name__ == "__main__":
    main()
