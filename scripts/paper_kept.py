"""The paper's per-layer kept fractions (Tables 2-5) scaled to another compression of the prunable weights, as the
value of a `pruning.kept=` override: the layers keep weights in the paper's proportions (capped at whole layers),
`round(weights / target)` in all.

Usage: python scripts/paper_kept.py lenet300 24   ->   {fc1:0.03483,fc2:0.03918,fc3:0.1132}
"""

import argparse

from pruning_cli.models import get_model_spec
from pruning_cli.paper import PAPER_KEPT
from pruning_cli.pruning.allocation import proportional_counts


def scaled_kept(model: str, target: float) -> dict[str, float]:
    """Each layer's kept fraction: the paper's proportions, scaled so that the whole keeps 1/target."""
    sizes = get_model_spec(model).layer_sizes()
    counts = proportional_counts(sizes, PAPER_KEPT[model], round(sum(sizes.values()) / target))
    return {name: counts[name] / sizes[name] for name in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(PAPER_KEPT))
    parser.add_argument("target", type=float, help="compression of the prunable weights, e.g. 24")
    arguments = parser.parse_args()
    kept = scaled_kept(arguments.model, arguments.target)
    print("{" + ",".join(f"{name}:{fraction:.6g}" for name, fraction in kept.items()) + "}")


if __name__ == "__main__":
    main()
