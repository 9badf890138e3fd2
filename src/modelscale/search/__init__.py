"""Automatic recipe search under measured constraints (Optuna): spaces, objectives, trials, Pareto set.

Example::

    import modelscale as ms
    result = ms.search("runs/cnn", "digits", objectives=["accuracy", "bytes"],
                       constraints=["accuracy_drop <= 1", "bytes <= 24000"], n_trials=50)
"""

from modelscale.search.early_stop import EarlyStop
from modelscale.search.objectives import METRICS, parse_constraints, parse_objectives
from modelscale.search.run import SearchResult, search
from modelscale.search.space import SearchSpace, default_space, parse_space

__all__ = [
    "METRICS",
    "EarlyStop",
    "SearchResult",
    "SearchSpace",
    "default_space",
    "parse_constraints",
    "parse_objectives",
    "parse_space",
    "search",
]
