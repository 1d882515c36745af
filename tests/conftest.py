"""Test configuration: choose where kernels run BEFORE Triton is imported.

By default (CI, no GPU) every Triton kernel runs in Triton's CPU interpreter: this file sets
``TRITON_INTERPRET=1`` before anything imports triton (the library itself never does).
With ``DRSFORMER_FAST_TEST_GPU=1`` on a machine with an NVIDIA GPU the same tests run the compiled
kernels on CUDA instead (plus the bf16 cases the interpreter cannot run).
"""

import os

GPU_MODE = os.environ.get("DRSFORMER_FAST_TEST_GPU", "0") == "1"
if not GPU_MODE:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

if GPU_MODE and not torch.cuda.is_available():
    raise RuntimeError("DRSFORMER_FAST_TEST_GPU=1 but torch sees no CUDA device")


def _triton36_interpreter_index_fix() -> None:
    """Triton 3.6's interpreter converts a runtime int (a one-element array) with ``int(array)``,
    which NumPy >= 2.4 refuses, so every ``range()`` over a runtime bound inside a kernel fails there;
    Triton 3.7+ squeezes the array first. Same fix, for the interpreter only (compiled kernels never
    see it): the kernels' own code is what runs on the GPU machine's Triton 3.6."""
    if GPU_MODE:
        return
    import triton
    import triton.runtime.interpreter as interp

    if tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 7):
        return
    original = getattr(interp, "_patch_lang_tensor", None)
    if original is None:
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interp._patch_lang_tensor = patched


_triton36_interpreter_index_fix()


def _install_memcheck() -> bool:
    """The memory checker (tests/memcheck.py) on every kernel launch in the interpreter, unless
    ``DRSFORMER_FAST_MEMCHECK=0`` (timing). It refuses a Triton whose interpreter lacks a hook point."""
    if GPU_MODE:
        return False
    import memcheck

    if not memcheck.enabled_by_env():
        return False
    memcheck.install()
    return True


MEMCHECK = _install_memcheck()

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one pytest-xdist worker per core: more threads per worker only oversubscribe the cores
    torch.set_num_threads(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "call":
        item.memcheck_call_failed = outcome.get_result().failed


@pytest.fixture(autouse=True)
def _memcheck_findings(request):
    """A memory-checker finding fails the test even where the test caught the launch's
    MemcheckError (e.g. ``pytest.raises(Exception)``); a test that failed on it is not failed twice."""
    if not MEMCHECK:
        yield
        return
    import memcheck

    memcheck.take_findings()
    yield
    found = memcheck.take_findings()
    if found and not getattr(request.node, "memcheck_call_failed", False):
        pytest.fail("memory checker findings in this test:\n" + "\n".join(map(str, found)), pytrace=False)


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests put their tensors: CUDA in GPU mode, else the CPU (interpreter)."""
    return torch.device("cuda") if GPU_MODE else torch.device("cpu")


@pytest.fixture(autouse=True)
def _poison_uninitialized_memory():
    """Every ``torch.empty`` (kernel outputs, workspaces, partial-sum buffers) is NaN-filled, so an
    element a kernel forgets to write shows up as NaN in the comparison."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def half_dtypes():
    """Half precisions the current mode can test: fp16 everywhere, bf16 only on a GPU (the
    interpreter has no bf16 arithmetic)."""
    return [torch.float16, torch.bfloat16] if GPU_MODE else [torch.float16]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is several times faster than two (no OpenMP hand-offs), and much
    faster still when other processes compete for the two cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def torch_path(monkeypatch):
    """The fused modules take their plain-PyTorch path in this test, as on a CPU without Triton's
    interpreter. For tests of the plumbing around the model (command line, inference, checkpoint
    loading): the kernels themselves are tested by the op and model tests, and the interpreter's
    minutes are spent there."""
    from drsformer_fast import _dispatch

    available, _, reason = _dispatch._kernels_state()
    monkeypatch.setattr(_dispatch, "_STATE", (available, False, reason))
    yield
