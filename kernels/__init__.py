"""Chunked Triton kernels for the gated delta rule (importable as gdn_verify.kernels)."""

from ._alloc import new_output, poisoned_outputs, unwritten_mask
from ._launch import clear_jit_cache, compile_timeline, compiled_variants, jit_cache_size, reset_variant_log
from ._triton_compat import INTERPRET
from .chunk import chunk_gated_delta_rule, chunk_gated_delta_rule_intermediates
from .fused_recurrent import fused_recurrent_gated_delta_rule

__all__ = [
    "INTERPRET",
    "chunk_gated_delta_rule",
    "chunk_gated_delta_rule_intermediates",
    "clear_jit_cache",
    "compile_timeline",
    "compiled_variants",
    "fused_recurrent_gated_delta_rule",
    "jit_cache_size",
    "new_output",
    "poisoned_outputs",
    "reset_variant_log",
    "unwritten_mask",
]
