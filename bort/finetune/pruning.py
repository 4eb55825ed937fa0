"""Agora's pruning of Θ after each iteration (SPEC section 6, step 4), as pluggable rules.

The paper removes "the longest common sequence rooted at the first element" of Θ sorted by
score; the project's reading is :func:`prune_worst_ties` (the default): the worst θ and every θ
tied with it. The rules live apart from :mod:`bort.finetune.agora` so that the configuration
(:mod:`bort.finetune.config`) can offer their names as the ``--prune`` choices.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

__all__ = ['Theta', 'PRUNE_RULES', 'prune_worst_ties', 'prune_worst_one']

#: One hyperparameter set θ: batch_size, warmup_ratio, weight_decay, lr, seed.
Theta = Dict[str, Any]


def prune_worst_ties(thetas: Sequence[Theta], scores: Sequence[float]) -> List[Theta]:
    """Remove the worst θ and every θ whose score equals it; the rest keep their order."""
    worst = min(scores)
    return [t for t, s in zip(thetas, scores) if s != worst]


def prune_worst_one(thetas: Sequence[Theta], scores: Sequence[float]) -> List[Theta]:
    """Remove only the worst θ (the last of tied ones in Θ's order): a slower alternative."""
    worst = max(range(len(scores)), key=lambda i: (-scores[i], i))
    return [t for i, t in enumerate(thetas) if i != worst]


#: Pruning rules: ``rule(thetas, scores) -> remaining thetas``, which must be fewer.
PRUNE_RULES: Dict[str, Callable[[Sequence[Theta], Sequence[float]], List[Theta]]] = {
    'worst_ties': prune_worst_ties, 'worst_one': prune_worst_one}
