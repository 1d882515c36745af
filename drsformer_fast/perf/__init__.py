"""Performance and correctness tooling: nothing the model needs at run time imports from here.

What lives here: byte and launch accounting (``accounting``), launch capture (``launches``), the
static sm_90 report (``static_report``, whose ``predict_launch`` predicts any Triton launch) and the
compile check (``compile_check``), the model's calibration on published H100 timings (``calibrate``,
with ``calibration_kernels``), the end-to-end prediction (``predict_model``) and its check on a GPU
(``kernel_times``), saved-tensor memory (``memory``), the host-cost measurement against a no-op CUDA
driver (``hostcost``), the benchmark driver and its figures (``bench``, ``benchmarking``, ``plots``),
and the self-check with its error bounds (``selfcheck``, ``tolerance``). These modules may import
anything below them (the model, the modules, the ops, the kernels); the model side never imports them
(``tests/test_layering.py``).
"""
