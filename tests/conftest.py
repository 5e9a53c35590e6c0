import gc
import os
import sys
from pathlib import Path

# Test helpers (tests/idx.py) import as plain modules.
sys.path.insert(0, str(Path(__file__).parent))

if "PYTEST_XDIST_WORKER" in os.environ:
    # pytest -n N: each worker takes its share of the cores, not all of them (N workers x all cores oversubscribes),
    # and so do the commands it starts: a run in a subprocess then sums as the same run in process does.
    import torch  # in the workers only: the process that hands out the tests need not pay a second for it

    THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(THREADS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


def pytest_unconfigure(config) -> None:
    """Every test has run: the objects they left go with the process, not through a last garbage collection over all
    of torch's modules at its exit (a second of each worker's end)."""
    gc.freeze()
