import pytest
import torch


@pytest.fixture
def one_thread():
    """Many tiny convolutions: one intra-op thread avoids OpenMP spinning on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
