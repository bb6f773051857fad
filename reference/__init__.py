"""Float64 references for the gated delta rule (importable as gdn_verify.reference).

Importing this package never imports JAX; `jax_recurrent_gated_delta_rule` does, lazily.
"""
