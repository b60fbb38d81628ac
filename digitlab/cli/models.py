"""`digitlab models`: the registered models, their families, training recipes and builder parameters.

    digitlab models
"""
from __future__ import annotations

from digitlab.registry import get_model_info, model_names


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the registered models, their recipes and parameters")
    p.set_defaults(func=run)


def run(args) -> int:
    for name in model_names():
        spec = get_model_info(name)
        print(f"{name}  [{spec.family}]  {spec.description}")
        recipe = " ".join(f"{k}={v}" for k, v in spec.defaults.items())
        print(f"    recipe: {recipe or '(TrainConfig defaults)'}")
        params = ", ".join(f"{k}={v!r}" for k, v in spec.params.items())
        print(f"    parameters: {params or 'none'}")
    return 0
