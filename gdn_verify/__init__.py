"""gdn-verify: verification of gated-delta-rule kernels against float64 references."""

__version__ = "0.1.0"
