"""Chunked Triton kernels for the gated delta rule (importable as gdn_verify.kernels)."""

from ._alloc import poisoned_outputs, unwritten_mask
from ._launch import compiled_variants
from .chunk import chunk_gated_delta_rule, chunk_gated_delta_rule_intermediates
from .fused_recurrent import fused_recurrent_gated_delta_rule

__all__ = [
    "chunk_gated_delta_rule",
    "chunk_gated_delta_rule_intermediates",
    "compiled_variants",
    "fused_recurrent_gated_delta_rule",
    "poisoned_outputs",
    "unwritten_mask",
]
