"""A static performance picture of the fused kernels on an H100 (sm_90), with no GPU.

    python -m drsformer_fast.perf.static_report [--arch 90] [--shapes infer256-enc1,...] [--dtypes fp32,bf16]
                                           [--markdown PATH] [--json PATH] [--launches-json PATH]
                                           [--jobs N] [--no-tf32]

For each of the default model's transformer-block shapes (``benchmarking.block_shapes()``: batch-1
256x256 inference levels and 4x128x128 training levels), forward and backward, fp32 and bf16:

1. **Launches.** The fast block (or, with ``--shapes model-infer256,model-train4x128``, the whole
   default model, MEFC included) runs on fake tensors (``launches.capture_case``): every Triton launch
   is recorded with its grid, arguments, constexprs, ``num_warps``/``num_stages`` and Triton's own
   specialisation of its arguments (``launches.specialise``).
2. **Compilation.** Each distinct specialisation is compiled for ``GPUTarget("cuda", arch, 32)`` with
   the launch's options, once (Triton's disk cache makes a second run fast). From the cubin
   (``cuobjdump`` shipped in the Triton wheel): registers, shared memory, local memory (spills) and
   the SASS, whose instructions are counted (:func:`sass_counts`).
3. **Work.** Triton's interpreter (in a subprocess, ``TRITON_INTERPRET=1``) runs ONE program of each
   launch (the middle one of the grid) on zero tensors of the real shapes, counting what it does:
   bytes loaded and stored (every access, re-reads included), the distinct bytes touched per
   tensor (every byte of each access: a 4-byte word of two bf16 elements counts 4), ``tl.dot``
   multiply-adds by input precision, and elementwise float add/sub/mul/div/fma.
   Totals are that program's counts x the number of programs (edge programs are assumed alike).
   bf16 launches are counted from the same block in fp16 (the interpreter has no bf16 arithmetic;
   the work is the same).
4. **Model** (a model, not a measurement): ``predicted = max(HBM, compute, L1) / efficiency`` where

   * HBM = compulsory bytes / 3.35 TB/s (H100 SXM). **Compulsory bytes**: for each distinct tensor
     argument, the distinct bytes the launch touches in it (the sampled program's
     distinct bytes x programs, capped at the tensor's own extent), read or written once.
     Re-reads (halos, taps, a tile loaded twice) are not compulsory: they go to L1/L2.
   * compute = FFMA-class ops / 33.5 T/s (fp32 elementwise and ``input_precision="ieee"`` dots) +
     TF32 dot MACs / 247 T/s + fp16/bf16 dot MACs / 495 T/s (dense tensor-core peaks). Elementwise
     adds, subtracts, multiplies and divisions count one each, less one per multiply that finds an
     add (launches compile with fp fusion on: ``acc += w * x`` is one FFMA); reductions, exp and
     comparisons are not counted.
   * L1 = wavefronts / (1 per clock per SM x 132 SMs x 1.98 GHz). Each global load instruction of
     ``w`` bytes per lane is taken to have its lanes ``max(w, s)`` bytes apart: 32 lanes x ``max(w, s)``
     / 128 wavefronts for 32 x ``w`` useful bytes. The spacing ``s`` comes from the load's own Triton
     layout (:func:`l1_layout_factor`): each LDG/LDGSTS of the SASS is matched by its source line
     (``nvdisasm -g``, through the PTX's ``.loc`` lines) to the ttgir load(s) on that line
     (``tt.load``, ``ttg.async_copy_global_to_local``), and
     ``s = sizePerThread x element bytes`` along the layout's contiguous dim when lanes step along it
     (a scalar fp32 tap load in a 4-per-thread layout: 16 B apart, 4x the wavefronts; the
     same taps in a 1-per-thread layout: 4 B, 1x). A load whose lanes all read one address
     (a scalar, a slice whose sliced dim carries the lanes, a tensor too small to span them) counts 1x;
     a line with several loads takes the largest spacing. A load that maps to no line or to a layout
     not modelled here (lanes only across rows, MMA and linear layouts) falls back to the widest-access rule,
     ``s = V`` the widest global access of the kernel, and the row says how many did (``l1_rule``,
     ``fell_back``). The kernel's factor ``sum(max(w, s)) / sum(w)`` over its static SASS load
     instructions (LDG and LDGSTS, as counted in the table) is ``l1_factor``. The prediction uses
     ``l1_factor_per_warp``, the same sum per warp instruction: at least one wavefront per row of
     lanes (a [2, 16]-lane tile of 4-byte loads: 2 for 128 bytes), and only the distinct bytes its
     lanes read count as useful (the interpreter counts each element once however many lanes read
     it), so a broadcast weight load (one address per warp) costs a wavefront for 4 bytes and a
     2-byte load by 32 lanes 2x. That factor scales the bytes the interpreter saw loaded; stores
     count 1 wavefront per 128 bytes. Still a model: same-line attribution (a line with two loads
     of different layouts is charged the worse one) and static counts (a load inside a loop weighs
     as much as one outside: a kernel whose per-channel loads sit outside its tap loop is charged
     too much for them).
   * efficiency = the share of the GPU the grid can use, taking one CTA to saturate its SM's
     throughput: ``P / 132`` for ``P < 132`` programs (a 3-program grid uses 3 of 132 SMs), else
     ``(P / 132) / (c ceil(P / (132 c)))`` with ``c`` resident CTAs per SM (the last wave partly
     empty). Latency hiding is not modelled: the resident-warps column says how much is in flight.

   The ratio column is predicted / HBM roofline (compulsory bytes at 3.35 TB/s).

Occupancy (resident warps per SM): registers rounded up to 8 per thread (256 per warp) from 65536
per SM, at most 64 warps and 32 CTAs per SM, 228 KB of shared memory per SM with 1 KB reserved per
CTA (227 KB at most per CTA).

Any Triton launch, not only this package's: :func:`predict_launch` (``kernel, grid, *args, **kwargs``;
fake or meta tensors are enough) and :func:`predict_launches` (many at once) apply the same steps 2-4
(``compile_spec``, ``count_work``, ``predict``) to one launch as called and return the prediction with
its terms, ``trips`` included (the most times one load instruction ran in the counted program: the
trips of its longest loop). ``drsformer_fast.perf.calibrate`` turns those terms into a time calibrated
on measured H100 kernels (an achievable bandwidth, a floor per launch, a latency per exposed loop trip).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

# --------------------------------------------------------------------------------------------
# the device model (H100 SXM)
# --------------------------------------------------------------------------------------------

SMS = 132
HBM_BYTES_PER_S = 3.35e12
FFMA_PER_S = 33.5e12
TF32_MAC_PER_S = 247e12
HALF_MAC_PER_S = 495e12
CLOCK_HZ = 1.98e9
L1_WAVEFRONTS_PER_S = SMS * CLOCK_HZ  # 128 bytes per clock per SM
REGS_PER_SM = 65536
REG_ALLOC_PER_WARP = 256
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32
SMEM_PER_SM = 228 * 1024
SMEM_PER_CTA = {80: 163 * 1024, 90: 227 * 1024}
SMEM_RESERVED_PER_CTA = 1024


def ctas_by_registers(regs: int, num_warps: int) -> int:
    """CTAs of ``num_warps`` whose registers fit one SM's register file (0: the CTA cannot launch)."""
    regs_per_warp = math.ceil(max(regs, 1) * 32 / REG_ALLOC_PER_WARP) * REG_ALLOC_PER_WARP
    return (REGS_PER_SM // regs_per_warp) // num_warps


def occupancy(regs: int, num_warps: int, shared: int) -> dict:
    """Resident CTAs and warps per SM of a kernel (sm_90 limits), and what limits them."""
    limits = {
        "registers": ctas_by_registers(regs, num_warps),
        "warps": MAX_WARPS_PER_SM // num_warps,
        "ctas": MAX_CTAS_PER_SM,
        "shared": SMEM_PER_SM // (shared + SMEM_RESERVED_PER_CTA) if shared else MAX_CTAS_PER_SM,
    }
    ctas = min(limits.values())
    order = ("warps", "ctas", "registers", "shared")  # on a tie, the hardware maximum is named
    limiter = min(order, key=lambda k: (limits[k], order.index(k)))
    return {"ctas_per_sm": ctas, "warps_per_sm": ctas * num_warps, "limited_by": limiter}


# --------------------------------------------------------------------------------------------
# SASS
# --------------------------------------------------------------------------------------------

_SASS_RE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")
_RESOURCE_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _width(opcode: str) -> int:
    """Bytes per lane of a global memory instruction, from its suffixes."""
    parts = opcode.split(".")
    for p in parts[1:]:
        if p in ("128", "64"):
            return int(p) // 8
        if p in ("U16", "S16"):
            return 2
        if p in ("U8", "S8"):
            return 1
    return 4


def sass_counts(sass: str) -> dict:
    """Static instruction counts of a SASS listing: global loads by bytes per lane (``ldg``: LDG,
    ``ldgsts``: cp.async), global stores (``stg``), tensor-core (``hmma``: HMMA, ``hgmma``: HGMMA),
    ``ffma`` (FFMA and its variants), ``fp32_other`` (FADD, FMUL), shared loads/stores, and the L1
    factor of the load instructions by the widest rule (every load's lanes as far apart as the widest
    global access: what the model falls back to where :func:`l1_layout_factor` has no layout)."""
    ops = Counter(m.group(1) for m in _SASS_RE.finditer(sass))
    ldg, ldgsts, stg = Counter(), Counter(), Counter()
    out = Counter()
    for op, n in ops.items():
        base = op.split(".")[0]
        if base == "LDG":
            ldg[_width(op)] += n
        elif base == "LDGSTS":
            ldgsts[_width(op)] += n
        elif base == "STG":
            stg[_width(op)] += n
        elif base == "HMMA":
            out["hmma"] += n
        elif base == "HGMMA":
            out["hgmma"] += n
        elif base in ("FFMA", "FFMA2"):
            out["ffma"] += n
        elif base in ("FADD", "FMUL", "FMUL2", "FADD2"):
            out["fp32_other"] += n
        elif base == "LDS" or base == "LDSM":
            out["lds"] += n
        elif base == "STS":
            out["sts"] += n
        elif base in ("UTMALDG", "UBLKCP"):
            out["tma"] += n
    widest = max([*ldg, *ldgsts, *stg, 0])
    useful = sum(w * n for w, n in (*ldg.items(), *ldgsts.items()))
    touched = sum(max(w, widest) * n for w, n in (*ldg.items(), *ldgsts.items()))
    return {
        **dict(out),
        "ldg": {str(k): v for k, v in sorted(ldg.items())},
        "ldgsts": {str(k): v for k, v in sorted(ldgsts.items())},
        "stg": {str(k): v for k, v in sorted(stg.items())},
        "widest_bytes_per_lane": widest,
        "l1_factor": (touched / useful) if useful else 1.0,
        "instructions": sum(ops.values()),
    }


def load_pattern(c: dict) -> str:
    """One word for the global loads: vector (all >= 8 B/lane), scalar (all 4 B or less: with a wider
    layout elsewhere these are the strided tap loads), or mixed; '+async' when cp.async is used."""
    loads = Counter()
    for kind in ("ldg", "ldgsts"):
        for w, n in c.get(kind, {}).items():
            loads[int(w)] += n
    if not loads:
        return "none"
    vec = sum(n for w, n in loads.items() if w >= 8)
    sca = sum(n for w, n in loads.items() if w < 8)
    word = "vector" if not sca else ("scalar" if not vec else f"mixed {vec}v/{sca}s")
    return word + ("+async" if c.get("ldgsts") else "")


# --------------------------------------------------------------------------------------------
# L1: each load's lane spacing from its Triton layout (ttgir) matched to the PTX by source line
# --------------------------------------------------------------------------------------------

_TTGIR_LAYOUT_RE = re.compile(r"^#(\w+) = #ttg\.blocked<\{(.*)\}>\s*$", re.M)
_TTGIR_LOC_RE = re.compile(r"^#(loc\d*) = loc\((.*)\)\s*$", re.M)
# a tensor of pointers (shape, element type, layout: a name or an inline attribute), or one pointer
_TTGIR_PTR_RE = re.compile(r"tensor<((?:\d+x)+)!tt\.ptr<(\w+)>, "
                           r"(#ttg\.slice<\{[^}]*\}>|#\w+(?:\.\w+)?(?:<\{[^}]*\}>)?)>|!tt\.ptr<(\w+)>")
_PTX_LOAD_RE = re.compile(r"^\s*(?:@!?%\w+\s+)?(ld\.global[\w.:]*|cp\.async\.c[ag]\.shared\.global[\w.:]*)\s+(.*)$")
_PTX_STORE_RE = re.compile(r"^\s*(?:@!?%\w+\s+)?(st\.global[\w.:]*)\s")


def _ints(text: str, key: str) -> list[int]:
    m = re.search(key + r" = \[([\d, ]*)\]", text)
    return [int(v) for v in m.group(1).split(",") if v.strip()] if m else []


def _resolve_loc(name: str, locs: dict, depth: int = 0):
    """(file, line) of a ttgir location: names and call sites resolve to the innermost one."""
    text = locs.get(name)
    if text is None or depth > 64:
        return None
    return _loc_text(text, locs, depth)


def _loc_text(text: str, locs: dict, depth: int):
    m = re.match(r'\s*"([^"]*)":(\d+):\d+', text)
    if m:
        return m.group(1), int(m.group(2))
    m = re.match(r'\s*callsite\(#(loc\d*) at', text)  # the callee: the load's own line, not the call
    if m is None:
        m = re.match(r'\s*"[^"]*"\(#(loc\d*)\)', text) or re.match(r'\s*fused\[#(loc\d*)', text)
    return _resolve_loc(m.group(1), locs, depth + 1) if m else None


def lane_spacing(layout: str, shape: tuple, elem_bytes: int, blocked: dict):
    """Bytes between adjacent lanes' addresses for a load of a tensor in ``layout`` (a ttgir layout
    attribute): 0 when every lane of a warp reads the same address (a scalar, a slice whose sliced dim
    carries the lanes, a tensor too small to span them); None when the layout is not one modelled
    here (lanes only across non-contiguous dims, MMA or linear layouts)."""
    geometry = lane_geometry(layout, shape, elem_bytes, blocked)
    return None if geometry is None else geometry[0]


def lane_geometry(layout: str, shape: tuple, elem_bytes: int, blocked: dict):
    """(lane spacing in bytes as :func:`lane_spacing`, lanes reading distinct addresses along the
    contiguous dim, distinct rows across the others) of one warp's load, or None."""
    if not shape:
        return 0, 1, 1
    sliced = None
    m = re.match(r"#ttg\.slice<\{dim = (\d+), parent = #(\w+)\}>", layout)
    if m:
        sliced, layout = int(m.group(1)), "#" + m.group(2)
    parent = blocked.get(layout[1:])
    if parent is None:
        return None
    size, lanes, order = parent["sizePerThread"], parent["threadsPerWarp"], parent["order"]
    dims = [d for d in range(len(size)) if d != sliced]  # the tensor's dims, in the parent's numbering
    if len(dims) != len(shape):
        return None
    extent = dict(zip(dims, shape))
    # lanes that read distinct elements along each dim (a sliced dim, or wrap-around, repeats them)
    distinct = {d: 1 if d == sliced else min(lanes[d], max(1, -(-extent[d] // size[d]))) for d in range(len(size))}
    if all(v == 1 for v in distinct.values()):
        return 0, 1, 1
    contiguous = next(d for d in order if d != sliced)
    if distinct[contiguous] > 1:
        return size[contiguous] * elem_bytes, distinct[contiguous], math.prod(
            v for d, v in distinct.items() if d != contiguous)
    return None


def ttgir_loads(ttgir: str) -> dict:
    """{(file, line): [:func:`lane_geometry` or None, ...]} for every global load of a ttgir listing
    (``tt.load`` and cp.async's ``ttg.async_copy_global_to_local``), at its innermost source line."""
    blocked = {}
    for m in _TTGIR_LAYOUT_RE.finditer(ttgir):
        body = m.group(2)
        blocked[m.group(1)] = {k: _ints(body, k) for k in ("sizePerThread", "threadsPerWarp", "order")}
    locs = {m.group(1): m.group(2) for m in _TTGIR_LOC_RE.finditer(ttgir)}
    out = {}
    for line in ttgir.splitlines():
        if " tt.load " not in line and " ttg.async_copy_global_to_local " not in line:
            continue
        m = _TTGIR_PTR_RE.search(line.split(" : ", 1)[-1])
        lm = re.search(r"loc\((#loc\d*|\"[^)]*)\)\s*$", line)
        if m is None or lm is None:
            continue
        where = _resolve_loc(lm.group(1)[1:], locs) if lm.group(1).startswith("#") else _loc_text(lm.group(1), locs, 0)
        if where is None:
            continue
        if m.group(4):  # a scalar pointer: one address for the whole warp
            spacing = (0, 1, 1)
        else:
            shape = tuple(int(v) for v in m.group(1).rstrip("x").split("x"))
            bits = re.search(r"\d+", m.group(2))
            spacing = lane_geometry(m.group(3), shape, int(bits.group()) // 8 if bits else 4, blocked)
        out.setdefault(where, []).append(spacing)
    return out


def _ptx_width(op: str, operands: str) -> int:
    """Bytes per thread of a PTX global load (``ld.global[.v2/.v4].<type>``) or cp.async (its size operand)."""
    if op.startswith("cp.async"):
        m = re.match(r"\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)", operands)
        return int(m.group(1), 0) if m else 4
    vec = re.search(r"\.v(\d)\b", op)
    bits = re.findall(r"\.[bfsu](\d+)\b", op)
    return (int(vec.group(1)) if vec else 1) * (int(bits[-1]) // 8 if bits else 4)


def ptx_loads(ptx: str) -> tuple[list, int]:
    """[(bytes per thread, (file, line), (file, line) as ptxas sees it)] for each global load
    instruction of a PTX listing (``ld.global*`` and ``cp.async.ca/cg``; lines may be None), and the
    widest global access (loads and stores).

    An instruction's line is the last ``.loc`` before it, except inside an inline-asm block (where
    Triton emits its loads): LLVM numbers the block's lines on from the block's own ``.loc`` (the
    second line of ``mov; ld`` gets line + 1), so the block's first ``.loc`` is the load's line, and the
    last one is the line ptxas (and so the SASS line info) gives it."""
    files = {m.group(1): m.group(2) for m in re.finditer(r'^\s*\.file\s+(\d+)\s+"([^"]*)"', ptx, re.M)}
    loads, widest, loc, block_loc, in_asm = [], 0, None, None, False
    for line in ptx.splitlines():
        s = line.strip()
        if s.startswith("// begin inline asm"):
            in_asm, block_loc = True, None
            continue
        if s.startswith("// end inline asm"):
            in_asm = False
            continue
        if s.startswith(".loc"):
            parts = s.split()
            loc = (files.get(parts[1]), int(parts[2])) if len(parts) > 2 and parts[1] in files else None
            if in_asm and block_loc is None:
                block_loc = loc
            continue
        m = _PTX_LOAD_RE.match(line)
        if m:
            w = _ptx_width(m.group(1), m.group(2))
            loads.append((w, (block_loc or loc) if in_asm else loc, loc))
            widest = max(widest, w)
            continue
        m = _PTX_STORE_RE.match(line)
        if m:
            widest = max(widest, _ptx_width(m.group(1), ""))
    return loads, widest


_SASS_LINE_RE = re.compile(r'//## File "([^"]*)", line (\d+)')


def sass_loads(listing: str) -> list:
    """[(bytes per lane, (file, line) or None)] for each LDG/LDGSTS of an ``nvdisasm -g`` listing
    (its ``//## File`` comments give each instruction's innermost source line)."""
    out, loc = [], None
    for line in listing.splitlines():
        m = _SASS_LINE_RE.search(line)
        if m:
            loc = (m.group(1), int(m.group(2)))
            continue
        m = _SASS_RE.search(line)
        if m and m.group(1).split(".")[0] in ("LDG", "LDGSTS"):
            out.append((_width(m.group(1)), loc))
    return out


def l1_layout_factor(ttgir: str, ptx: str, sass_lines: str | None = None) -> dict:
    """The L1 factor of the module docstring: each global load's lanes ``max(w, s)`` bytes apart, the
    spacing ``s`` from the Triton layout of the ttgir load(s) at the load's source line (the largest
    where a line has several). The loads counted are the SASS ones when ``sass_lines`` (an
    ``nvdisasm -g`` listing) is given (ptxas unrolls loops: its counts weigh a loop's loads as they
    run), else the PTX ones; a SASS load at a line where the PTX saw loads of several source lines
    (Triton's inline-asm loads reach ptxas one line late) is shared among them as the PTX counts
    are. Loads that map to no line or to a layout not modelled here fall back to the widest rule
    (lanes ``max(w, V)`` apart, V the widest global access) and are counted (``fell_back``).

    ``l1_factor_per_warp`` (what :func:`predict` uses) counts what the factor leaves out:
    a warp's load costs at least one wavefront per row of lanes, and only its distinct lanes' bytes
    are bytes the interpreter counts, so a broadcast (one address per warp) costs 128 / w, and a
    2-byte load by 32 lanes 2x."""
    by_line = ttgir_loads(ttgir)
    ptx_list, widest = ptx_loads(ptx)
    if sass_lines is not None:
        # the line ptxas sees may be the inline-asm shifted line of a load on the line before: a SASS
        # load at that line stands for the PTX loads seen there, in their proportions
        seen_as = {}
        for _, true, seen in ptx_list:
            seen_as.setdefault(seen, Counter())[true] += 1
        loads = [(w, seen_as.get(where) or Counter([where])) for w, where in sass_loads(sass_lines)]
        widest = max([widest, *(w for w, _ in loads)])
    else:
        loads = [(w, Counter([where])) for w, where, _ in ptx_list]
    useful = touched = fell_back = warp_useful = warp_touched = 0
    for w, wheres in loads:
        total = sum(wheres.values())
        for where, n in wheres.items():
            found = by_line.get(where, [])
            if found and all(g is not None for g in found):
                spacing, lanes, rows = max(found)
            else:
                (spacing, lanes, rows), fell_back = (widest, 32, 1), fell_back + n / total
            useful += w * n / total
            touched += max(w, spacing) * n / total
            # per warp: at least one wavefront per row of lanes, and only distinct lanes' bytes count
            # (the interpreter counts each element once, however many lanes read it)
            warp_useful += rows * lanes * w * n / total
            warp_touched += rows * math.ceil(lanes * max(w, spacing) / 128) * 128 * n / total
    fell_back = round(fell_back, 2)
    rule = "layout" if not fell_back else ("widest" if fell_back >= len(loads) else "layout+widest")
    return {"l1_factor": touched / useful if useful else 1.0, "l1_rule": rule, "counted": "sass" if
            sass_lines is not None else "ptx", "loads": len(loads), "fell_back": fell_back,
            "widest_bytes_per_lane": widest,
            "l1_factor_per_warp": warp_touched / warp_useful if warp_useful else 1.0}


# --------------------------------------------------------------------------------------------
# compilation (a worker process per compile; no TRITON_INTERPRET)
# --------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_spec(spec, arch: int, sass: bool = True) -> dict:
    """Compile one ``launches.Specialisation`` for sm_<arch>: resources (and SASS counts)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = {"kernel": spec.kernel, "arch": arch, "num_warps": spec.num_warps, "num_stages": spec.num_stages}
    t0 = time.perf_counter()
    try:
        fn = getattr(importlib.import_module(spec.module), spec.kernel)
        attrs = {k: [list(a) for a in v] for k, v in spec.attrs}
        src = ASTSource(fn, dict(spec.signature), constexprs=dict(spec.constexprs), attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(spec.options))
    except Exception as exc:  # report every failure, not just the first
        row["error"] = f"compile failed: {type(exc).__name__}: {exc}"[:2000]
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    row["triton_shared"] = int(compiled.metadata.shared)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        path = f.name
    try:
        res = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True,
                             check=True).stdout
        listing = subprocess.run([_tool("cuobjdump"), "--dump-sass", path], capture_output=True, text=True,
                                 check=True).stdout if sass else ""
        # the same SASS with each instruction's source line (Triton compiles with line info)
        lined = subprocess.run([_tool("nvdisasm"), "-g", "-c", path], capture_output=True, text=True,
                               check=True).stdout if sass else ""
    finally:
        os.unlink(path)
    m = _RESOURCE_RE.search(res)
    if m is None:
        row["error"] = f"could not read resource usage from cuobjdump: {res[:500]}"
        return row
    row["regs"], row["stack"], row["cuobjdump_shared"], row["local"] = map(int, m.groups())
    row["shared"] = max(row["cuobjdump_shared"], row["triton_shared"])
    if sass:
        row["sass"] = sass_counts(listing)
        asm = compiled.asm
        if "ttgir" in asm and "ptx" in asm:
            row["l1"] = l1_layout_factor(asm["ttgir"], asm["ptx"], lined)
    problems = []
    if row["local"] or row["stack"]:
        problems.append(f"register spills: LOCAL={row['local']} STACK={row['stack']}")
    # ptxas honours an explicit maxnreg above what num_warps leave per thread: such a CTA cannot launch
    if ctas_by_registers(row["regs"], spec.num_warps) == 0:
        problems.append(f"{row['regs']} registers x {32 * spec.num_warps} threads exceed the register file "
                        f"({REGS_PER_SM}): the CTA cannot launch")
    if row["shared"] > SMEM_PER_CTA[arch]:
        problems.append(f"shared memory {row['shared']} B exceeds sm_{arch}'s {SMEM_PER_CTA[arch]} B per CTA")
    if problems:
        row["error"] = "; ".join(problems)
    return row


def compile_all(specs: list, arch: int, jobs: int | None = None, sass: bool = True) -> dict:
    """Compile each distinct specialisation once: {spec: row}."""
    unique = list(dict.fromkeys(specs))
    jobs = jobs or min(2, os.cpu_count() or 1)
    if jobs <= 1 or len(unique) <= 1:
        return {s: compile_spec(s, arch, sass) for s in unique}
    with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(compile_spec, unique, [arch] * len(unique), [sass] * len(unique)))
    return dict(zip(unique, rows))


# --------------------------------------------------------------------------------------------
# work: one program of each launch in Triton's interpreter (a subprocess with TRITON_INTERPRET=1)
# --------------------------------------------------------------------------------------------


class _Counter:
    """Counts what the interpreter does while one program runs."""

    def __init__(self):
        self.load_bytes = 0
        self.store_bytes = 0
        self.addresses: list = []  # numpy arrays of the byte addresses accessed
        self.fmul = 0
        self.fadd = 0  # adds and subtracts
        self.fother = 0  # divisions, explicit fma
        self.dot = Counter()  # precision class -> multiply-adds
        self.load_sites = Counter()  # the kernel's source line of each load executed -> times

    def load_site(self, kernel_name: str):
        """Count a load at its line of the kernel's source (the innermost frame of the kernel)."""
        f = sys._getframe(2)
        while f is not None and f.f_code.co_name != kernel_name:
            f = f.f_back
        self.load_sites[f.f_lineno if f is not None else None] += 1

    @property
    def trips(self) -> int:
        """The most times one load instruction ran in the program: its longest loop's trips."""
        return max(self.load_sites.values(), default=1)

    def access(self, ptrs, mask, store: bool):
        import numpy as np

        elsize = ptrs.get_element_ty().primitive_bitwidth // 8
        addr = ptrs.data[mask.data] if mask is not None else ptrs.data.ravel()
        n = int(addr.size) * elsize
        if store:
            self.store_bytes += n
        else:
            self.load_bytes += n
        # every byte the access covers: a 4-byte load of two 2-byte elements touches both
        self.addresses.append(np.unique((np.unique(addr)[:, None] + np.arange(elsize, dtype=addr.dtype)).ravel()))

    def elementwise(self, name: str, handle):
        import numpy as np

        data = handle.data
        if np.issubdtype(data.dtype, np.floating):
            if name == "create_fmul":
                self.fmul += int(data.size)
            elif name in ("create_fadd", "create_fsub"):
                self.fadd += int(data.size)
            else:
                self.fother += int(data.size)

    @property
    def ffma(self) -> int:
        """FFMA-class instructions: launches compile with fp fusion on, so a multiply and the add it
        feeds (``acc += w * x``) are one FMA; the multiplies that find an add are taken as fused."""
        return self.fmul + self.fadd + self.fother - min(self.fmul, self.fadd)


def _run_one_program(fn_interp, args, kwargs, grid):
    """Run program (grid // 2) of an InterpretedFunction launch (Triton 3.x interpreter internals)."""
    import inspect

    from triton.runtime import interpreter as I

    fn = fn_interp.rewrite()
    ex = I.GridExecutor(fn, fn_interp.arg_names, grid)
    argspec = inspect.getfullargspec(ex.fn)
    kwargs = {k: v for k, v in kwargs.items() if k in argspec.args or k in argspec.kwonlyargs}
    args_hst, kwargs_hst = ex._init_args_hst(args, kwargs)
    scope = I._patch_lang(ex.fn)
    try:
        call = inspect.getcallargs(ex.fn, *args_hst, **kwargs_hst)
        call = {n: a if n in ex.constexprs else I._implicit_cvt(a) for n, a in call.items()}
        I.interpreter_builder.set_grid_dim(*grid)
        I.interpreter_builder.set_grid_idx(*(g // 2 for g in grid))
        ex.fn(**call)
    finally:
        scope.restore()


def _materialise(launch):
    """Real zero tensors with the fake arguments' shapes, strides, offsets and shared storages."""
    import torch

    storages = {}

    def real(t):
        if not isinstance(t, torch.Tensor):
            return t
        st = t.untyped_storage()
        key = st._cdata
        if key not in storages:
            storages[key] = torch.zeros(st.nbytes(), dtype=torch.uint8).untyped_storage()
        r = torch.empty(0, dtype=t.dtype)
        r.set_(storages[key], t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        return r

    args = tuple(real(a) for a in launch.args)
    kwargs = {k: real(v) for k, v in launch.kwargs.items()}
    return args, kwargs


def count_work(launch) -> dict:
    """Work of one launch: one program in the interpreter, scaled by the number of programs."""
    import numpy as np
    import torch
    from triton.runtime import interpreter as I

    b = I.interpreter_builder
    c = _Counter()
    cls = type(b)
    originals = {}

    def patch(name, wrapper):
        originals[name] = b.__dict__.get(name)
        setattr(b, name, wrapper)

    def masked_load(ptrs, mask, other, cache, vol):
        c.access(ptrs, mask, False)
        c.load_site(launch.name)
        return cls.create_masked_load(b, ptrs, mask, other, cache, vol)

    def masked_store(ptrs, value, mask, cache):
        c.access(ptrs, mask, True)
        return cls.create_masked_store(b, ptrs, value, mask, cache)

    def dot(a, bb, d, precision, imprecise):
        m, k = a.data.shape[-2:]
        n = bb.data.shape[-1]
        batch = int(np.prod(a.data.shape[:-2])) if a.data.ndim > 2 else 1
        half = a.dtype.primitive_bitwidth <= 16
        p = str(precision).lower()
        kind = "half" if half else ("tf32x3" if "x3" in p else ("tf32" if "tf32" in p else "ieee"))
        c.dot[kind] += batch * m * n * k
        return cls.create_dot(b, a, bb, d, precision, imprecise)

    def counted(name):
        orig = getattr(cls, name)

        def f(*a):
            out = orig(b, *a)
            c.elementwise(name, out)
            return out

        return f

    patch("create_masked_load", masked_load)
    patch("create_masked_store", masked_store)
    patch("create_dot", dot)
    for name in ("create_fadd", "create_fsub", "create_fmul", "create_fdiv", "create_precise_divf", "create_fma"):
        patch(name, counted(name))
    args, kwargs = _materialise(launch)
    try:
        with np.errstate(all="ignore"):
            _run_one_program(launch.kernel, args, kwargs, launch.grid)
    finally:
        for name in originals:
            delattr(b, name)
    # distinct bytes touched in each tensor argument by this program
    ranges = []
    for name, t in zip(*_tensor_args(launch, args, kwargs)):
        lo = t.data_ptr()
        extent = (sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1) * t.element_size() if t.numel() else 0
        ranges.append((name, lo, lo + extent, t))
    per_tensor = {}
    if c.addresses:
        allk = np.unique(np.concatenate([a.astype(np.uint64) for a in c.addresses]))
        for name, lo, hi, t in ranges:
            inside = int(((allk >= lo) & (allk < hi)).sum())
            from .accounting import tensor_bytes

            per_tensor[name] = {"program_bytes": inside, "extent_bytes": tensor_bytes(t)}
    del args, kwargs
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"program": {"load_bytes": c.load_bytes, "store_bytes": c.store_bytes, "ffma": c.ffma, "dot": dict(c.dot),
                        "trips": c.trips},
            "tensors": per_tensor}


def _tensor_args(launch, args, kwargs):
    import inspect

    import torch

    fn = launch.kernel.fn
    sig = inspect.signature(fn)
    b = sig.bind(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
    names, tensors, seen = [], [], set()
    for k, v in b.arguments.items():
        if isinstance(v, torch.Tensor):
            key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()))
            if key not in seen:
                seen.add(key)
                names.append(k)
                tensors.append(v)
    return names, tensors


def _count_worker(request: dict) -> list:
    """In a TRITON_INTERPRET=1 process: capture and count every launch of every (shape, dtype) asked."""
    import torch

    from ..kernels._utils import gpu_tiles
    from . import launches as L

    out = []
    cache = {}
    for shape_id, dtype in request["cases"]:
        torch_dtype = torch.float16 if dtype in ("bf16", "fp16") else torch.float32
        # the GPU's tiles, not the interpreter's: the counted program is the compiled one
        with gpu_tiles():
            captured = L.capture_case(shape_id, torch_dtype, arch=request.get("arch", 90), tf32=request["tf32"])
        for i, launch in enumerate(captured):
            key = (launch.name, launch.grid, _arg_key(launch))
            if key not in cache:
                cache[key] = count_work(launch)
            out.append({"shape": shape_id, "dtype": dtype, "index": i, "kernel": launch.name,
                        "grid": list(launch.grid), **cache[key]})
        print(f"counted {shape_id} {dtype}", file=sys.stderr, flush=True)
    return out


def _arg_key(launch):
    import torch

    parts = []
    for a in (*launch.args, *sorted(launch.kwargs.items())):
        if isinstance(a, tuple) and len(a) == 2 and isinstance(a[1], torch.Tensor):
            a = a[1]
        if isinstance(a, torch.Tensor):
            parts.append((str(a.dtype), tuple(a.shape), tuple(a.stride()), a.storage_offset()))
        else:
            parts.append(repr(a))
    return tuple(parts)


def count_in_subprocess(cases: list, tf32: bool, arch: int = 90) -> list:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    with tempfile.TemporaryDirectory() as d:
        req, res = os.path.join(d, "req.json"), os.path.join(d, "res.json")
        with open(req, "w") as f:
            json.dump({"cases": cases, "tf32": tf32, "arch": arch}, f)
        # its stderr (progress, errors) goes to ours
        proc = subprocess.run([sys.executable, "-m", "drsformer_fast.perf.static_report", "--_count", req, res],
                              env=env)
        if proc.returncode != 0:
            raise RuntimeError("the interpreter's work count failed (its error is above)")
        with open(res) as f:
            return json.load(f)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    shape: str
    level: str
    scenario: str
    dtype: str
    pass_: str
    index: int
    kernel: str
    config: str
    grid: tuple
    programs: int
    num_warps: int
    num_stages: int
    pass_bytes: int
    compile: dict = field(default_factory=dict)
    work: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)


def grid_efficiency(programs: int, ctas_per_sm: int) -> float:
    """Share of the GPU's throughput a grid can use, taking one CTA to saturate its SM: ``P / 132`` for
    ``P < 132`` programs (idle SMs), else the fill of the last wave of ``132 c`` CTAs."""
    if programs < SMS:
        return programs / SMS
    slots = SMS * max(ctas_per_sm, 1)
    return (programs / SMS) / (max(ctas_per_sm, 1) * math.ceil(programs / slots))


def predict(programs: int, num_warps: int, comp: dict, work: dict) -> dict:
    """The model of the module docstring for one launch: times in microseconds."""
    occ = occupancy(comp.get("regs", 0), num_warps, comp.get("shared", 0)) if "regs" in comp else None
    p = work["program"]
    compulsory = sum(min(t["program_bytes"] * programs, t["extent_bytes"]) for t in work["tensors"].values())
    loads, stores = p["load_bytes"] * programs, p["store_bytes"] * programs
    dots = {k: v * programs for k, v in p["dot"].items()}
    ffma = p["ffma"] * programs + dots.get("ieee", 0)
    # the layout rule where the compilation gave one (rows of older runs have only the widest rule)
    l1 = comp.get("l1") or {"l1_factor": comp.get("sass", {}).get("l1_factor", 1.0), "l1_rule": "widest"}
    l1_factor = l1.get("l1_factor_per_warp", l1["l1_factor"])
    wavefronts = loads * l1_factor / 128 + stores / 128
    hbm_us = compulsory / HBM_BYTES_PER_S * 1e6
    compute_us = (ffma / FFMA_PER_S + (dots.get("tf32", 0) + 3 * dots.get("tf32x3", 0)) / TF32_MAC_PER_S
                  + dots.get("half", 0) / HALF_MAC_PER_S) * 1e6
    l1_us = wavefronts / L1_WAVEFRONTS_PER_S * 1e6
    ctas = occ["ctas_per_sm"] if occ and occ["ctas_per_sm"] > 0 else 1
    slots = SMS * ctas
    efficiency = grid_efficiency(programs, ctas)
    terms = {"hbm": hbm_us, "compute": compute_us, "l1": l1_us}
    bound = max(terms, key=terms.get)
    predicted = max(terms.values()) / efficiency
    return {
        "compulsory_bytes": compulsory, "loaded_bytes": loads, "stored_bytes": stores, "ffma": ffma,
        "dot_macs": dots, "l1_wavefronts": wavefronts, "hbm_us": hbm_us, "compute_us": compute_us,
        "l1_us": l1_us, "l1_factor": l1_factor, "l1_rule": l1["l1_rule"], "l1_fell_back": l1.get("fell_back", 0),
        "efficiency": efficiency, "bound": bound, "predicted_us": predicted,
        "ratio": predicted / hbm_us if hbm_us else float("inf"),
        "waves": programs / slots, "programs": programs, "trips": p.get("trips", 1), **(occ or {}),
    }


def build_rows(shape_ids: list[str], dtypes: list[str], arch: int, jobs: int | None, tf32: bool,
               progress=print) -> list[Row]:
    import torch

    from . import launches as L

    cases = [(s, d) for s in shape_ids for d in dtypes]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(1) as bg:  # the interpreter's count runs beside the compilations
        counting = bg.submit(count_in_subprocess, cases, tf32, arch)
        captured = []
        for shape_id, dtype in cases:
            torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
            for i, launch in enumerate(L.capture_case(shape_id, torch_dtype, arch=arch, tf32=tf32)):
                captured.append((shape_id, dtype, i, launch, L.specialise(launch, arch)))
        progress(f"captured {len(captured)} launches in {time.perf_counter() - t0:.1f} s; compiling "
                 f"{len({c[4] for c in captured})} distinct specialisations for sm_{arch}")
        compiled = compile_all([c[4] for c in captured], arch, jobs)
        progress(f"compiled in {time.perf_counter() - t0:.1f} s; waiting for the interpreter's work counts")
        work = {(w["shape"], w["dtype"], w["index"]): w for w in counting.result()}
    progress(f"work counted in {time.perf_counter() - t0:.1f} s")
    rows = []
    for shape_id, dtype, i, launch, spec in captured:
        w = work[(shape_id, dtype, i)]
        if w["kernel"] != launch.name or tuple(w.get("grid", launch.grid)) != tuple(launch.grid):
            raise RuntimeError(f"{shape_id} {dtype} launch {i}: the interpreter saw {w['kernel']} on grid "
                               f"{w.get('grid')}, the compiler {launch.name} on {launch.grid}")
        comp = compiled[spec]
        row = Row(shape_id, launch.tags["level"], launch.tags["scenario"], dtype, launch.tags["pass"], i,
                  launch.name, spec.describe(), launch.grid, launch.programs, spec.num_warps, spec.num_stages,
                  launch.tags["pass_bytes"], comp, w)
        row.model = predict(launch.programs, spec.num_warps, comp, w)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# any Triton launch: predict_launch
# --------------------------------------------------------------------------------------------


def _portable(v, storages: dict):
    """A launch argument as JSON: a tensor by its storage, dtype, shape, strides and offset (its data is
    never read), anything else as itself (numbers, strings, None)."""
    import torch

    if isinstance(v, torch.Tensor):
        st = v.untyped_storage()
        key = storages.setdefault(st._cdata, len(storages))
        return {"tensor": [str(v.dtype).split(".")[-1], list(v.shape), list(v.stride()), v.storage_offset(), key,
                           st.nbytes()]}
    if v is None or isinstance(v, (bool, int, float, str)):
        return {"value": v}
    raise TypeError(f"predict_launch: argument {v!r} of type {type(v).__name__} cannot be described "
                    "(tensors, numbers, strings and None are)")


def _launch_request(kernel, grid, args, kwargs) -> dict:
    from .launches import Launch, _resolve_grid

    fn = getattr(kernel, "fn", None)
    if fn is None or not hasattr(kernel, "run"):
        raise TypeError(f"predict_launch: {kernel!r} is not a @triton.jit kernel")
    storages: dict = {}
    grid = _resolve_grid(kernel, args, kwargs, grid)
    return {"module": fn.__module__, "kernel": fn.__name__, "grid": list(grid),
            "args": [_portable(a, storages) for a in args],
            "kwargs": {k: _portable(v, storages) for k, v in kwargs.items()},
            "launch": Launch(kernel, tuple(args), dict(kwargs), grid)}


def _real_arg(d: dict, storages: dict):
    """A :func:`_portable` argument as a CPU tensor on a fresh storage (shared by tensors that shared one;
    pages never touched are never resident), bf16 as fp16; anything else as itself."""
    import torch

    if "value" in d:
        return d["value"]
    dtype, shape, stride, offset, key, nbytes = d["tensor"]
    if key not in storages:
        storages[key] = torch.empty(max(nbytes, 1), dtype=torch.uint8).untyped_storage()
    t = torch.empty(0, dtype=torch.float16 if dtype == "bfloat16" else getattr(torch, dtype))
    t.set_(storages[key], offset, tuple(shape), tuple(stride))
    return t


def _count_launches_worker(requests: list) -> list:
    """In a TRITON_INTERPRET=1 process: count one program of each described launch (bf16 tensors as
    fp16: the interpreter has no bf16 arithmetic, the bytes are the same)."""
    import importlib

    from .launches import Launch

    out = []
    for req in requests:
        kernel = getattr(importlib.import_module(req["module"]), req["kernel"])
        storages: dict = {}
        args = tuple(_real_arg(a, storages) for a in req["args"])
        kwargs = {k: _real_arg(v, storages) for k, v in req["kwargs"].items()}
        out.append(count_work(Launch(kernel, args, kwargs, tuple(req["grid"]))))
        del args, kwargs, storages
    return out


def _count_launches_in_subprocess(requests: list):
    """Start counting ``requests`` in a TRITON_INTERPRET=1 process; the returned function waits for it
    and gives its counts. A process, not a thread, runs beside the compilations: the compile pool forks,
    and a fork while another thread holds a lock can hang the child."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    d = tempfile.TemporaryDirectory()
    req, res = os.path.join(d.name, "req.json"), os.path.join(d.name, "res.json")
    with open(req, "w") as f:
        json.dump(requests, f)
    proc = subprocess.Popen([sys.executable, "-m", "drsformer_fast.perf.static_report", "--_count_launches", req,
                             res], env=env)

    def result() -> list:
        try:
            if proc.wait() != 0:
                raise RuntimeError("the interpreter's work count failed (its error is above)")
            with open(res) as f:
                return json.load(f)
        finally:
            d.cleanup()

    return result


_PREDICTED: dict = {}  # (specialisation, grid, arguments) -> prediction, for the life of the process


def predict_launches(calls: list, arch: int = 90, jobs: int | None = None, progress=None) -> list[dict]:
    """:func:`predict_launch` for many launches ``(kernel, grid, args, kwargs)`` at once: each distinct
    specialisation compiled once (``jobs`` processes), every launch's program counted in one interpreter
    process, and each distinct launch predicted once per process."""
    from .launches import specialise

    requests = [_launch_request(k, g, tuple(a), dict(kw)) for k, g, a, kw in calls]
    specs = [specialise(r["launch"], arch) for r in requests]
    keys = [(s, arch, json.dumps([r["grid"], r["args"], r["kwargs"]], sort_keys=True)) for s, r in zip(specs, requests)]
    todo = {}
    for key, spec, r in zip(keys, specs, requests):
        if key not in _PREDICTED and key not in todo:
            todo[key] = (spec, r)
    if todo:
        if progress:
            progress(f"compiling {len({s for s, _ in todo.values()})} specialisations for sm_{arch}, "
                     f"counting {len(todo)} launches in the interpreter")
        counting = _count_launches_in_subprocess([{k: v for k, v in r.items() if k != "launch"}
                                                  for _, r in todo.values()])
        compiled = compile_all([s for s, _ in todo.values()], arch, jobs)
        work = counting()
        for (key, (spec, r)), w in zip(todo.items(), work):
            comp = compiled[spec]
            launch = r["launch"]
            model = predict(launch.programs, spec.num_warps, comp, w)
            _PREDICTED[key] = {"kernel": launch.name, "config": spec.describe(), "grid": tuple(launch.grid),
                               "num_warps": spec.num_warps, "regs": comp.get("regs"), "spills": comp.get("local", 0)
                               + comp.get("stack", 0), "error": comp.get("error"), **model}
    return [dict(_PREDICTED[k]) for k in keys]


def predict_launch(kernel, grid, *args, **kwargs) -> dict:
    """The static model's prediction for any ``@triton.jit`` launch ``kernel[grid](*args, **kwargs)`` on an
    H100 (sm_90), with its terms (``drsformer_fast.perf.static_report.predict_launch``).

    The arguments are what the launch would get: tensors may be fake or ``device="meta"`` (only their
    dtype, shape, strides and offset are used), launch options (``num_warps``, ``num_stages``) go in
    ``kwargs`` as for the launch. The launch is specialised as Triton's ``JITFunction.run`` would on an
    H100, compiled for ``GPUTarget("cuda", 90, 32)`` (registers, spills, SASS, each load's layout), and
    one program (the middle of the grid) runs in Triton's interpreter in a subprocess to count its
    bytes, distinct bytes per tensor, FFMA-class ops, dot multiply-adds and loop trips; the kernel must
    be importable by its module and name there. Returns a dict with ``predicted_us`` (the model of
    the module docstring, at 3.35 TB/s, no per-launch floor) and its terms: ``hbm_us``, ``compute_us``,
    ``l1_us``, ``efficiency``, ``bound``, ``compulsory_bytes``, ``programs``, ``trips`` (the most times
    one load instruction ran in the counted program), ``ctas_per_sm``, ``warps_per_sm``, ``regs``,
    ``spills``, ``config``. ``calibrate.triton_time`` turns the terms into the time calibrated on
    measured H100 kernels."""
    return predict_launches([(kernel, grid, args, kwargs)])[0]


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def _mb(n):
    return f"{n / 1e6:.1f}"


def _config_cell(config: str) -> str:
    """``kernel[fp32](A=1,B=2;w8,s3)`` (or, from older runs, ``kernel(A=1;w8,s3)``) -> ``fp32: A=1,B=2;w8,s3``."""
    rest = config.split("[", 1)[1].replace("](", ": ", 1) if "[" in config else config.split("(", 1)[1]
    return rest.rstrip(")")


def _loads_cell(c: dict, m: dict) -> str:
    """The load pattern and the L1 factor the model used ('*': some loads by the widest rule)."""
    if "sass" not in c:
        return "-"
    cell = load_pattern(c["sass"])
    if "l1_factor" in m:  # rows of older runs have none
        cell += f", L1 x{m['l1_factor']:.1f}{'' if m.get('l1_rule') == 'layout' else '*'}"
    return cell


def _sass_cell(s: dict) -> str:
    tc = s.get("hmma", 0) + s.get("hgmma", 0)
    return f"{tc}/{s.get('ffma', 0)}"


def format_markdown(rows: list[Row], arch: int, meta: dict) -> str:
    lines = [f"# Static performance picture, sm_{arch} (H100 SXM model)", "",
             "Generated by `python -m drsformer_fast.perf.static_report` (no GPU): every Triton launch of the fast "
             "transformer block at the default model's shapes, compiled for sm_"
             f"{arch} as launched; times are a model (see the module docstring), not measurements.", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "Columns: programs and waves (on 132 SMs, at the resident CTAs per SM), warps per CTA, "
              "registers per thread, shared memory per CTA (KB), resident warps per SM (and the limiting "
              "resource), spilled bytes, global-load pattern from the SASS (vector = 8/16-byte loads, scalar "
              "= 4 bytes or less per lane, +async = cp.async) and the L1 factor of the loads (from each load's "
              "layout; * where some fell back to the widest-access rule), tensor-core/FFMA static instruction "
              "counts, "
              "compulsory MB, HBM roofline us, predicted us, the bound (hbm, compute, l1) and predicted/roofline.",
              ""]
    groups = {}
    for r in rows:
        groups.setdefault((r.shape, r.dtype, r.pass_), []).append(r)
    lines += ["## Whole block or model (sum over its Triton launches)", "",
              "| shape | dtype | pass | launches | predicted us | HBM roofline us | ratio | whole pass roofline us |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for (shape, dtype, pass_), rs in groups.items():
        pred = sum(r.model["predicted_us"] for r in rs)
        roof = sum(r.model["hbm_us"] for r in rs)
        whole = rs[0].pass_bytes / HBM_BYTES_PER_S * 1e6
        lines.append(f"| {shape} | {dtype} | {pass_} | {len(rs)} | {pred:.1f} | {roof:.1f} | {pred / roof:.2f} | "
                     f"{whole:.1f} |")
    lines += ["", "Predicted and roofline: the Triton launches only (the cuBLAS 1x1 convolutions and small ATen "
              "reductions between them are not modelled). Whole pass roofline: every op of the pass, cuBLAS "
              "included, at 3.35 TB/s, from the byte tables of `drsformer_fast.perf.accounting` (compulsory bytes "
              "of the fused ops, inputs + outputs of the others).", ""]
    def excess(r):
        return r.model["predicted_us"] - r.model["hbm_us"]

    worst = {}
    for r in rows:
        if r.kernel not in worst or excess(r) > excess(worst[r.kernel]):
            worst[r.kernel] = r
    lines += ["## Each kernel at its largest excess over the roofline (predicted - roofline)", "",
              "| kernel | shape | dtype | pass | programs | predicted us | roofline us | ratio | bound "
              "| resident warps | loads |", "|---|---|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in sorted(worst.values(), key=lambda r: -excess(r)):
        m = r.model
        lines.append(f"| {r.kernel} | {r.shape} | {r.dtype} | {r.pass_} | {r.programs} | {m['predicted_us']:.1f} | "
                     f"{m['hbm_us']:.1f} | {m['ratio']:.2f} | {m['bound']} | {m.get('warps_per_sm', '-')} | "
                     f"{_loads_cell(r.compile, m)} |")
    for (shape, dtype, pass_), rs in groups.items():
        if rs[0].level == "model":  # hundreds of launches: one row per kernel
            lines += ["", f"## {shape} {dtype} {pass_} (per kernel)", "",
                      "| kernel | launches | programs | regs | resident warps | spill B | loads | MB | roofline us | "
                      "predicted us | ratio |", "|---|---:|---|---|---|---:|---|---:|---:|---:|---:|"]
            by_kernel = {}
            for r in rs:
                by_kernel.setdefault(r.kernel, []).append(r)
            for kernel, ks in sorted(by_kernel.items(), key=lambda kv: -sum(r.model["predicted_us"] for r in kv[1])):
                pred = sum(r.model["predicted_us"] for r in ks)
                roof = sum(r.model["hbm_us"] for r in ks)
                regs = sorted({r.compile.get("regs", 0) for r in ks})
                warps = sorted({r.model.get("warps_per_sm", 0) for r in ks})
                progs = [r.programs for r in ks]
                spill = max(r.compile.get("local", 0) + r.compile.get("stack", 0) for r in ks)
                pattern = _loads_cell(ks[0].compile, ks[0].model)
                lines.append(f"| {kernel} | {len(ks)} | {min(progs)}-{max(progs)} | {regs[0]}-{regs[-1]} | "
                             f"{warps[0]}-{warps[-1]} | {spill} | {pattern} | "
                             f"{_mb(sum(r.model['compulsory_bytes'] for r in ks))} | {roof:.1f} | {pred:.1f} | "
                             f"{pred / roof if roof else float('inf'):.2f} |")
            continue
        lines += ["", f"## {shape} {dtype} {pass_}", "",
                  "| # | kernel | config | grid | programs | waves | warps | regs | smem KB | resident warps | "
                  "spill B | loads | TC/FFMA | MB | roofline us | predicted us | bound | ratio |",
                  "|---:|---|---|---|---:|---:|---:|---:|---:|---|---:|---|---|---:|---:|---:|---|---:|"]
        for r in rs:
            c, m = r.compile, r.model
            if "regs" not in c:
                lines.append(f"| {r.index} | {r.kernel} | {r.config} | {r.grid} | {r.programs} | | {r.num_warps} "
                             f"| | | | | | | {_mb(m['compulsory_bytes'])} | {m['hbm_us']:.1f} | | | "
                             f"{c.get('error', '')[:80]} |")
                continue
            lines.append(
                f"| {r.index} | {r.kernel} | {_config_cell(r.config)} | {'x'.join(map(str, r.grid))} | "
                f"{r.programs} | {m['waves']:.2f} | {r.num_warps} | {c['regs']} | {c['shared'] / 1024:.1f} | "
                f"{m['warps_per_sm']} ({m['limited_by']}) | {c['local'] + c['stack']} | "
                f"{_loads_cell(c, m)} | {_sass_cell(c['sass'])} | {_mb(m['compulsory_bytes'])} | "
                f"{m['hbm_us']:.1f} | {m['predicted_us']:.1f} | {m['bound']} | {m['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def _row_json(r: Row) -> dict:
    d = asdict(r)
    d["pass"] = d.pop("pass_")
    return d


def _row_from_json(d: dict) -> Row:
    d = dict(d)
    d["pass_"] = d.pop("pass")
    d["grid"] = tuple(d["grid"])
    return Row(**d)


LAUNCH_FIELDS = ("shape", "level", "dtype", "pass", "index", "kernel", "config", "grid", "programs", "num_warps",
                 "regs", "shared", "spill", "warps_per_sm", "compulsory_mb", "roofline_us", "predicted_us", "bound")


def launch_data(rows: list[Row], arch: int, meta: dict) -> dict:
    """Every launch of the report as compact data (``--launches-json``): per launch its place (shape,
    level, dtype, pass, index), kernel and configuration, grid, warps, registers, shared memory and
    spilled bytes, resident warps per SM, compulsory MB, HBM roofline and predicted microseconds and
    the bound, one list per launch in the order of ``fields``. ``scripts/kernel_tables.py`` writes the
    kernel modules' launch tables from it."""
    out = []
    for r in rows:
        c, m = r.compile, r.model
        d = {"shape": r.shape, "level": r.level, "dtype": r.dtype, "pass": r.pass_, "index": r.index,
             "kernel": r.kernel, "config": _config_cell(r.config), "grid": list(r.grid), "programs": r.programs,
             "num_warps": r.num_warps, "regs": c.get("regs"), "shared": c.get("shared"),
             "spill": c.get("local", 0) + c.get("stack", 0) if "regs" in c else None,
             "warps_per_sm": m.get("warps_per_sm"), "compulsory_mb": round(m["compulsory_bytes"] / 1e6, 3),
             "roofline_us": round(m["hbm_us"], 3), "predicted_us": round(m["predicted_us"], 3),
             "bound": m["bound"]}
        out.append([d[k] for k in LAUNCH_FIELDS])
    return {"arch": arch, "meta": meta, "fields": list(LAUNCH_FIELDS), "rows": out}


def write_launch_data(path: str, data: dict) -> None:
    """The launch data as JSON, one launch per line (a regenerated file diffs by launch)."""
    head = json.dumps({k: v for k, v in data.items() if k != "rows"}, indent=1)[:-2]
    lines = [json.dumps(r, separators=(",", ":")) for r in data["rows"]]
    with open(path, "w") as f:
        f.write(head + ',\n "rows": [\n' + ",\n".join(lines) + "\n ]\n}\n")


def parse_shapes(text: str | None) -> list[str]:
    from .benchmarking import block_shapes
    from .launches import MODEL_CASES

    ids = [s.id for s in block_shapes()]
    if not text:
        return ids
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        pool = list(MODEL_CASES) if item.startswith("model") else ids
        match = [i for i in pool if item in i]
        if not match:
            raise ValueError(f"unknown shape {item!r}: choose from {', '.join([*ids, *MODEL_CASES])}")
        out.extend(m for m in match if m not in out)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_count_launches"]:  # the interpreter subprocess of predict_launches
        with open(argv[1]) as f:
            req = json.load(f)
        out = _count_launches_worker(req)
        with open(argv[2], "w") as f:
            json.dump(out, f)
        return 0
    if argv[:1] == ["--_count"]:  # the interpreter subprocess
        with open(argv[1]) as f:
            req = json.load(f)
        out = _count_worker(req)
        with open(argv[2], "w") as f:
            json.dump(out, f)
        return 0
    parser = argparse.ArgumentParser(prog="python -m drsformer_fast.perf.static_report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SMEM_PER_CTA))
    parser.add_argument("--shapes", help="comma-separated block shapes (ids or parts of ids: infer256-enc1, "
                                         "latent, train4x128), or the whole model: model-infer256, "
                                         "model-train4x128 (MEFC included); default: every block shape")
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32, bf16 (default both)")
    parser.add_argument("--markdown", help="write the report here (else print it)")
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--launches-json", metavar="PATH",
                        help="write every launch as compact data here (what scripts/kernel_tables.py reads)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile processes (default 2)")
    parser.add_argument("--from-json", metavar="PATH", nargs="+",
                        help="render the markdown of earlier runs' --json outputs, their rows in order (nothing "
                             "is compiled or run; the first run's settings are shown)")
    parser.add_argument("--no-tf32", action="store_true",
                        help="capture with torch.backends.cudnn.allow_tf32 = False (exact fp32 dots)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the report compiles the kernels")
    if args.from_json:
        rows, meta = [], None
        for path in args.from_json:
            with open(path) as f:
                saved = json.load(f)
            rows += [_row_from_json(r) for r in saved["rows"]]
            meta = meta or saved["meta"]
        md = format_markdown(rows, args.arch, meta)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(md)
        else:
            print(md)
        if args.launches_json:
            write_launch_data(args.launches_json, launch_data(rows, args.arch, meta))
        return 0
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in ("fp32", "bf16", "fp16")]
    if bad:
        parser.error(f"unknown dtype {bad[0]!r}: choose from fp32, bf16, fp16")
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as exc:
        parser.error(str(exc))
    t0 = time.perf_counter()
    rows = build_rows(shapes, dtypes, args.arch, args.jobs, not args.no_tf32,
                      progress=lambda s: print(s, file=sys.stderr))
    import torch
    import triton

    meta = {"triton": triton.__version__, "torch": torch.__version__,
            "fp32 dots that replace convolutions": "TF32 allowed (PyTorch's default)" if not args.no_tf32
            else "exact fp32 (allow_tf32 = False)",
            "bf16": "the block's parameters and input in bf16 (work counted from the same block in fp16)",
            "work": "one program (the middle of the grid) run in Triton's interpreter, x programs",
            "runtime": f"{time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPUs"}
    md = format_markdown(rows, args.arch, meta)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    else:
        print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": [_row_json(r) for r in rows]}, f, indent=1, default=str)
    if args.launches_json:
        write_launch_data(args.launches_json, launch_data(rows, args.arch, meta))
    failed = [r for r in rows if "error" in r.compile]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
