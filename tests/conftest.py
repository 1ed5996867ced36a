import os

import torch

# Triton kernels run on the CPU in interpreter mode when there is no GPU; the
# switch must be set before greedyprune.triton defines them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from greedyprune import ops  # noqa: E402
from greedyprune import triton as gp_triton  # noqa: E402


def pytest_report_header(config):
    cuda = torch.cuda.is_available()
    triton = ("not installed (skipped: no triton)" if not gp_triton.HAS_TRITON
              else "interpreter mode (TRITON_INTERPRET=1)" if gp_triton.INTERPRETED else "on the GPU")
    return [f"greedyprune: compiled extension {'loaded' if ops.HAS_C else 'MISSING'}; "
            f"CUDA {'available' if cuda else 'not available (skipped: no CUDA)'}; Triton {triton}"]


@pytest.fixture(params=["cpu", "reference"])
def backend(request):
    """Every test that takes this fixture runs once per CPU backend."""
    if request.param == "cpu" and not ops.HAS_C:
        pytest.skip("compiled extension greedyprune._C not built")
    return request.param
