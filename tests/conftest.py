import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests use tiny tensors: one intra-op thread is faster than two and immune to
    OpenMP spin contention on a loaded 2-core CI host."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def disable_batched_vjp(monkeypatch):
    """A callable that disables autograd's batched VJP (for the rest of the test), so
    exact_divergence takes its loop fallback."""
    grad = torch.autograd.grad

    def no_batched(*args, **kw):
        if kw.get("is_grads_batched"):
            raise RuntimeError("batched VJP disabled")
        return grad(*args, **kw)

    return lambda: monkeypatch.setattr(torch.autograd, "grad", no_batched)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
