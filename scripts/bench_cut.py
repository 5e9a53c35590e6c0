"""The survivors of one global cut, chosen by selection (what pruning.allocation does) against a stable sort of every
score (what it did before), side by side on random scores the size of a network's prunable weights; and the count of
a mask that size, by count_nonzero (what the cut and the policies do) against a bool sum (what they did before).

    python scripts/bench_cut.py [--weights 138344128] [--keep 0.1] [--repeats 3]

The default size is VGG-16's prunable weights; both ways keep the same positions (checked on every repeat).
"""

import argparse
import statistics
import time

import torch

from pruning_cli.pruning.masks import count_nonzero, top_indices


def stable_sort_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    return torch.sort(scores, descending=True, stable=True).indices[:count]


def median_seconds(work, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def compare_mask_counts(scores: torch.Tensor, count: int, repeats: int) -> None:
    mask = scores >= scores.kthvalue(scores.numel() - count + 1).values
    assert int(mask.sum()) == count_nonzero([mask])
    by_sum = median_seconds(lambda: int(mask.sum()), repeats)
    by_count = median_seconds(lambda: count_nonzero([mask]), repeats)
    print(f"count a mask: bool sum {by_sum:.3f} s, count_nonzero {by_count:.3f} s ({by_sum / by_count:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=int, default=138_344_128)
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    scores = torch.rand(arguments.weights, generator=torch.Generator().manual_seed(0))
    count = round(arguments.keep * arguments.weights)
    times: dict[str, list[float]] = {"stable sort": [], "selection": []}
    for _ in range(arguments.repeats):
        chosen = {}
        for name, cut in (("stable sort", stable_sort_top), ("selection", top_indices)):
            started = time.perf_counter()
            chosen[name] = cut(scores, count)
            times[name].append(time.perf_counter() - started)
        assert torch.equal(chosen["stable sort"].sort().values, chosen["selection"].sort().values)
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    threads, repeats = torch.get_num_threads(), arguments.repeats
    print(f"{arguments.weights:,} scores, keep {count:,}, {threads} threads, median of {repeats}")
    for name, seconds in medians.items():
        print(f"{name:>12}: {seconds:.2f} s")
    print(f"stable sort / selection: {medians['stable sort'] / medians['selection']:.1f}x")
    compare_mask_counts(scores, count, arguments.repeats)


if __name__ == "__main__":
    main()
