"""Image tasks: reading and writing images (``imageio``), deraining a tensor or a file with padding and
tiles (``inference``), PSNR/SSIM under the paper's and BasicSR's protocols (``metrics``), scoring saved
results (``scoring``) and deraining-plus-scoring a folder (``evaluation``).

These modules take a model as an argument and may import the model side (``drsformer_fast`` top level,
``ops``, ``kernels``); nothing on the model side imports them, nor ``perf`` (``tests/test_layering.py``).
"""
