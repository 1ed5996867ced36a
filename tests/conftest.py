import pytest
import torch

from greedyprune import ops


def pytest_report_header(config):
    cuda = torch.cuda.is_available()
    return [f"greedyprune: compiled extension {'loaded' if ops.HAS_C else 'MISSING'}; "
            f"CUDA {'available' if cuda else 'not available (skipped: no CUDA)'}"]


@pytest.fixture(params=["cpu", "reference"])
def backend(request):
    """Every test that takes this fixture runs once per CPU backend."""
    if request.param == "cpu" and not ops.HAS_C:
        pytest.skip("compiled extension greedyprune._C not built")
    return request.param
