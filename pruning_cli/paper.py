"""The paper's figures (Han et al. 2015, Tables 1-5; /work/shared/PAPER.md), in one place.

The report compares runs with them, the benchmarks prune to them, and a test holds the experiment presets to them.
"""

import math
from dataclasses import dataclass

NETWORKS = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5", "alexnet": "AlexNet", "vgg16": "VGG-16"}


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 1; errors in %, top-5 only for the ImageNet networks."""

    dataset: str
    dense_top1: float
    pruned_top1: float
    params_before: float
    params_after: float
    compression: float
    dense_top5: float = math.nan
    pruned_top5: float = math.nan


PAPER_TABLE1 = {
    "lenet300": PaperRow("MNIST", 1.64, 1.59, 267e3, 22e3, 12),
    "lenet5": PaperRow("MNIST", 0.80, 0.77, 431e3, 36e3, 12),
    "alexnet": PaperRow("ImageNet", 42.78, 42.77, 61e6, 6.7e6, 9, 19.73, 19.67),
    "vgg16": PaperRow("ImageNet", 31.50, 31.34, 138e6, 10.3e6, 13, 11.32, 10.88),
}

# Paper Tables 2-5: % of weights kept per layer, the total over all layers, and the FLOPs reduction of the network.
PAPER_KEPT = {
    "lenet300": {"fc1": 8, "fc2": 9, "fc3": 26},
    "lenet5": {"conv1": 66, "conv2": 12, "fc1": 8, "fc2": 19},
    "alexnet": {"conv1": 84, "conv2": 38, "conv3": 35, "conv4": 37, "conv5": 37, "fc6": 9, "fc7": 9, "fc8": 25},
    "vgg16": {
        "conv1_1": 58, "conv1_2": 22, "conv2_1": 34, "conv2_2": 36, "conv3_1": 53, "conv3_2": 24, "conv3_3": 42,
        "conv4_1": 32, "conv4_2": 27, "conv4_3": 34, "conv5_1": 35, "conv5_2": 29, "conv5_3": 36,
        "fc6": 4, "fc7": 4, "fc8": 23,
    },
}  # fmt: skip
# What later work reached on the same networks with no loss of accuracy (MNIST / ImageNet), as compression factors.
LATER_WORK = {"Dynamic Network Surgery": {"lenet300": 56, "lenet5": 108, "alexnet": 17.7}}
# Deep Compression (Han, Mao and Dally, ICLR 2016, Table 1): storage of pruning + trained quantization + Huffman
# coding against dense float32, with no loss of accuracy.
DEEP_COMPRESSION = {"lenet300": 40, "lenet5": 39, "alexnet": 35, "vgg16": 49}

PAPER_KEPT_TOTAL = {"lenet300": 8, "lenet5": 8, "alexnet": 11, "vgg16": 7.5}
PAPER_FLOPS_CUT = {"lenet300": 12, "lenet5": 6, "alexnet": 3, "vgg16": 5}


def network_name(model: str) -> str:
    """The paper's name of a model (`lenet300` -> `LeNet-300-100`); unknown models keep their own name."""
    return NETWORKS.get(model, model)
