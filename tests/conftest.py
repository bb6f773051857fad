import os

from gdn_verify.platform import pin_cpu_dispatch

# NumPy and torch read their SIMD caps when they load: before anything imports them.
pin_cpu_dispatch()

import torch  # noqa: E402

# @triton.jit reads TRITON_INTERPRET when a kernel is decorated, so this must happen before
# any test module imports gdn_verify.kernels. On a CUDA machine the kernels are compiled
# unless the caller asked for the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Triton's own jitted helpers (tl.sum's combine function, ...) are decorated when triton is
# first imported: here, so that a test that unsets TRITON_INTERPRET for a moment cannot be the
# first importer and leave them compiled-mode for every interpreted kernel after it.
import triton  # noqa: E402,F401

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
