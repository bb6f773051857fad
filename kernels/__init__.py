"""Chunked Triton kernels for the gated delta rule (importable as gdn_verify.kernels)."""
