"""Float64 references for the gated delta rule (importable as gdn_verify.reference).

Importing this package never imports JAX; `jax_recurrent_gated_delta_rule` does, lazily.
"""

from .chunked import CHUNK_SIZE, ChunkIntermediates, chunked_gated_delta_rule
from ._sequences import PaddedLayout, prepare
from .jax_recurrent import jax_recurrent_gated_delta_rule
from .torch_recurrent import recurrent_gated_delta_rule

__all__ = [
    "CHUNK_SIZE",
    "ChunkIntermediates",
    "PaddedLayout",
    "chunked_gated_delta_rule",
    "jax_recurrent_gated_delta_rule",
    "prepare",
    "recurrent_gated_delta_rule",
]
