import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: thread start-up and oversubscription cost more than the work itself
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
