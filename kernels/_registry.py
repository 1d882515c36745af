"""Registry of every kernel configuration the package can launch, for the ahead-of-time compile check.

Each kernel module lists, next to its launcher, the configurations its launcher can choose
(constexpr values, pointer dtypes, ``num_warps``) in a generator decorated with
:func:`register_compile_configs`. ``python -m drsformer_fast.perf.compile_check`` compiles them
all for sm_80 and sm_90 without a GPU and reports registers, shared memory and spills; the test
suite runs it. A new kernel joins the check by registering its configurations: no new test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

_PROVIDERS: list[Callable[[], Iterable[CompileConfig]]] = []

# the GPU targets the compile check compiles for: A100 (sm_80) and H100 (sm_90)
COMPILE_ARCHS = (80, 90)


@dataclass(frozen=True)
class CompileConfig:
    """One launchable specialisation of a ``@triton.jit`` kernel.

    ``signature`` maps every non-constexpr argument name to its Triton type (``"*fp32"``, ``"i32"``,
    ``"fp32"``); ``constexprs`` gives every ``tl.constexpr`` argument its value; ``extra``: compile
    options the launcher passes beyond ``LAUNCH_OPTIONS`` (e.g. ``{"maxnreg": 128}``), which override them;
    ``archs``: the targets (``COMPILE_ARCHS``) whose launcher chooses this configuration, empty for all
    (a launcher whose choice depends on ``compute_capability`` registers one per target).
    """

    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 1
    tag: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    archs: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        fn = getattr(self.kernel, "fn", self.kernel)
        consts = ",".join(f"{k}={v}" for k, v in sorted(self.constexprs.items()))
        return f"{fn.__name__}[{self.tag}]({consts};w{self.num_warps})"


def register_compile_configs(provider: Callable[[], Iterable[CompileConfig]]):
    """Decorator: ``provider()`` yields the :class:`CompileConfig` s a launcher can produce."""
    _PROVIDERS.append(provider)
    return provider


def all_compile_configs() -> list[CompileConfig]:
    # Importing the package imports every kernel module, which registers its providers.
    from . import KERNEL_MODULES  # noqa: F401

    out: list[CompileConfig] = []
    for provider in _PROVIDERS:
        out.extend(provider())
    return out


TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


def ptr(dtype_name: str) -> str:
    """Triton pointer type for a torch dtype name (``"float16"`` -> ``"*fp16"``)."""
    return "*" + TRITON_DTYPES[dtype_name]
