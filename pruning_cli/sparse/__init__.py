"""Sparse storage and sparse inference of pruned models (Han et al. 2015, section 3.5; Deep Compression's storage).

`formats` holds the pure tensor encodings (CSR, the paper's relative k-bit indices with filler zeros),
`export` turns a pruned state_dict into a file of CSR layers plus a size report, `model` builds an inference model
whose fc layers multiply with `torch.sparse` CSR tensors, and `cli` is the `prune-export` command. A reader of
finished runs: it imports the records contract, the models and the pruning math, never the run.
"""

from pruning_cli.sparse.formats import (
    compact_bytes,
    csr_bytes,
    decode_compact,
    decode_csr,
    encode_compact,
    encode_csr,
    index_bits,
    smallest_index_dtype,
)

__all__ = [
    "compact_bytes",
    "csr_bytes",
    "decode_compact",
    "decode_csr",
    "encode_compact",
    "encode_csr",
    "index_bits",
    "smallest_index_dtype",
]
