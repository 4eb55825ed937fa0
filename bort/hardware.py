"""What this CPU can run fast, decided once per process before MXNet loads (imports nothing heavy).

MXNet 1.9.1 ships oneDNN 2.4.4, which has AMX (Advanced Matrix Extensions) kernels for bfloat16
and INT8 but does not use them unless two things happen before its first primitive is made:

1. the process asks Linux for the AMX tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM,
   XFEATURE_XTILEDATA)``, Linux 5.16+); without it the first AMX instruction kills the process;
2. ``DNNL_MAX_CPU_ISA=AVX512_CORE_AMX`` is in the environment (oneDNN 2.4 caps its ISA below
   AMX by default).

:func:`cpu_support` does both, once, where the CPU has AMX (``amx_tile`` and ``amx_bf16`` in
``/proc/cpuinfo``), and keeps its decision as a frozen :class:`CpuSupport` that everything else
reads (``--dtype bfloat16`` of the fast inference path and of the training scripts, the
benchmarks' bfloat16 columns).
``import bort`` calls it, so any entry point that imports the package before MXNet (the
``run_*.py`` scripts, ``python -m bort.…``, the benchmarks, the test suite) decides in time. A
``DNNL_MAX_CPU_ISA`` the user set is kept. Child processes inherit the variable but not the
tile permission (Linux clears it at ``execve``): a child that runs MXNet must import ``bort``
first too, as :func:`probe_bf16`'s does.

bfloat16 kernels exist in oneDNN 2.4 only from AVX-512 on: natively with AVX512-BF16 or AMX.
On AVX2 (this project's AMD EPYC), MXNet 1.9.1 raises ``MXNetError: could not create a
primitive descriptor iterator`` for a bfloat16 ``FullyConnected`` (:func:`probe_bf16` checks it
in a child process), so such machines keep float32 and say so in one log line
(:func:`announce`). AVX-512 without BF16 would emulate bfloat16, slower than float32: also
float32.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, FrozenSet, MutableMapping, Optional, Tuple

from .errors import UserError

__all__ = ['CpuSupport', 'UnsupportedHardware', 'cpu_flags', 'decide', 'cpu_support',
           'request_amx_tiles', 'require_bf16', 'announce', 'probe_bf16', 'ISA_ENV', 'AMX_ISA']

log = logging.getLogger(__name__)

#: x86-64 Linux: the arch_prctl system call, its "request permission for an extended state"
#: code and the XSAVE feature number of the AMX tile data (linux/arch/x86/include/uapi/asm).
SYS_ARCH_PRCTL = 158
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
#: oneDNN's ISA cap and the value that lets it use AMX.
ISA_ENV = 'DNNL_MAX_CPU_ISA'
AMX_ISA = 'AVX512_CORE_AMX'
#: ISA caps (oneDNN 2.4 names) under which bfloat16 runs natively.
_BF16_ISAS = ('AVX512_CORE_BF16', 'AVX512_CORE_AMX', 'ALL')


class UnsupportedHardware(UserError, RuntimeError):
    """The CPU (or the ISA cap set for oneDNN) cannot run what was asked; the message says why."""


@dataclass(frozen=True)
class CpuSupport:
    """The decision of :func:`decide`.

    Attributes
    ----------
    has_amx : bool
        ``amx_tile`` and ``amx_bf16`` in the CPU flags.
    has_avx512_bf16 : bool
        ``avx512_bf16`` in the CPU flags (native bfloat16 dot products without AMX).
    amx_enabled : bool
        Linux granted the tile state and oneDNN's ISA cap allows AMX.
    bf16_usable : bool
        oneDNN can run bfloat16 kernels natively here (AMX granted, or AVX512-BF16 with an ISA
        cap that allows it).
    reason : str
        One line saying what was decided and why (logged by :func:`announce`).
    """

    has_amx: bool
    has_avx512_bf16: bool
    amx_enabled: bool
    bf16_usable: bool
    reason: str

    @property
    def bf16_hardware(self) -> bool:
        """The CPU has native bfloat16 instructions (whatever the ISA cap or tile permission):
        what decides whether other frameworks (PyTorch) run bfloat16 fast here."""
        return self.has_amx or self.has_avx512_bf16


def cpu_flags(text: str) -> FrozenSet[str]:
    """The flags every processor of ``/proc/cpuinfo``'s ``text`` has (intersection; empty if
    the text has no ``flags`` line, e.g. on ARM)."""
    sets = [frozenset(line.split(':', 1)[1].split()) for line in text.splitlines()
            if line.split(':', 1)[0].strip() == 'flags' and ':' in line]
    return frozenset.intersection(*sets) if sets else frozenset()


def request_amx_tiles() -> Tuple[bool, str]:
    """Ask Linux for permission to use the AMX tile state in this process.

    Returns
    -------
    granted : bool
    detail : str
        Empty when granted, else why not (errno name, or not x86-64 Linux).
    """
    if not sys.platform.startswith('linux') or platform.machine() not in ('x86_64', 'AMD64'):
        return False, 'not x86-64 Linux'
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_REQ_XCOMP_PERM),
                          ctypes.c_ulong(XFEATURE_XTILEDATA))
    if result == 0:
        return True, ''
    code = ctypes.get_errno()
    return False, f'arch_prctl(ARCH_REQ_XCOMP_PERM) failed: {errno.errorcode.get(code, code)}'


def decide(cpuinfo: str, environ: MutableMapping[str, str],
           request: Callable[[], Tuple[bool, str]] = request_amx_tiles) -> CpuSupport:
    """Decide what oneDNN may use, asking for the AMX tile state where the CPU has AMX.

    Parameters
    ----------
    cpuinfo : str
        The text of ``/proc/cpuinfo`` (empty when unreadable).
    environ : mutable mapping
        The environment; ``ISA_ENV`` is set to ``AMX_ISA`` when AMX is granted and the user set
        no cap of their own.
    request : callable
        Asks for the tile state (:func:`request_amx_tiles`); called only where the CPU has AMX.

    Returns
    -------
    CpuSupport
    """
    flags = cpu_flags(cpuinfo)
    has_amx = {'amx_tile', 'amx_bf16'} <= flags
    has_bf16 = 'avx512_bf16' in flags
    user_isa = environ.get(ISA_ENV, '').strip().upper()
    granted, detail = request() if has_amx else (False, '')
    if has_amx and granted and not user_isa:
        environ[ISA_ENV] = AMX_ISA
    isa = environ.get(ISA_ENV, '').strip().upper()
    amx_enabled = has_amx and granted and isa in (AMX_ISA, 'ALL')
    capped = f'{ISA_ENV}={user_isa} (set by you)' if user_isa else ''
    if has_amx and not granted and isa in (AMX_ISA, 'ALL'):
        # oneDNN would issue AMX instructions the kernel has not enabled: the process would die.
        return CpuSupport(has_amx, has_bf16, False, False,
                          f'float32: {capped} asks oneDNN for AMX but Linux refused the tile '
                          f'state ({detail}); unset it to use bfloat16 without AMX')
    if amx_enabled:
        return CpuSupport(has_amx, has_bf16, True, True,
                          f'AMX: tile state granted, {ISA_ENV}={isa}'
                          + (' (set by you)' if user_isa else '')
                          + '; bfloat16 and INT8 run on AMX')
    bf16_isa = not isa or isa in _BF16_ISAS
    if has_bf16 and bf16_isa:
        why = ('' if not has_amx else f' (AMX not used: {detail})' if not granted
               else f' (AMX not used: {capped})')
        return CpuSupport(has_amx, has_bf16, False, True,
                          f'AVX512-BF16 without AMX{why}: bfloat16 runs, often no faster than '
                          f'float32')
    if has_bf16:
        return CpuSupport(has_amx, has_bf16, False, False,
                          f'float32: {capped} keeps oneDNN below its bfloat16 kernels')
    if not flags:
        what = 'no CPU flags readable'
    elif 'avx512f' in flags:
        what = 'CPU has AVX-512 without BF16 (oneDNN would emulate bfloat16, slower than float32)'
    else:
        best = next((f for f in ('avx2', 'avx', 'sse4_2') if f in flags), 'no AVX')
        what = f'CPU lacks bfloat16 (best vector ISA {best.upper()}, no AVX512-BF16 or AMX)'
    return CpuSupport(has_amx, has_bf16, False, False, f'float32: {what}')


_DECISION: Optional[CpuSupport] = None


def cpu_support() -> CpuSupport:
    """The process's decision (made on the first call, from ``/proc/cpuinfo`` and
    ``os.environ``). Call it before MXNet is imported: oneDNN reads its ISA cap once."""
    global _DECISION  # pylint: disable=global-statement
    if _DECISION is None:
        try:
            with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
                text = f.read()
        except OSError:
            text = ''
        late = 'mxnet' in sys.modules
        _DECISION = decide(text, os.environ)
        if late and _DECISION.amx_enabled:
            log.warning('MXNet was imported before bort: oneDNN may not see %s=%s', ISA_ENV,
                        os.environ.get(ISA_ENV))
    return _DECISION


_ANNOUNCED = False


def announce(logger: Optional[logging.Logger] = None) -> CpuSupport:
    """Log the decision once per process (one INFO line) and return it."""
    global _ANNOUNCED  # pylint: disable=global-statement
    support = cpu_support()
    if not _ANNOUNCED:
        (logger or log).info('CPU: %s', support.reason)
        _ANNOUNCED = True
    return support


def require_bf16(what: str = 'bfloat16') -> CpuSupport:
    """The decision, or :class:`UnsupportedHardware` (one line) where bfloat16 cannot run."""
    support = cpu_support()
    if not support.bf16_usable:
        raise UnsupportedHardware(f'{what} needs a CPU with AVX512-BF16 or AMX; here: '
                                  f'{support.reason}')
    return support


_PROBE = """
import bort  # the AMX tile state before MXNet loads, as every entry point does
import numpy as np, mxnet as mx
from mxnet.contrib.amp.amp import bfloat16
x = np.arange(24, dtype=np.float32).reshape(4, 6) / 8 - 1
w = (np.arange(18, dtype=np.float32).reshape(3, 6) - 9) / 16
y = mx.nd.FullyConnected(mx.nd.array(x).astype(bfloat16), mx.nd.array(w).astype(bfloat16),
                         no_bias=True, num_hidden=3)
ref = x @ w.T
import sys  # the child's answer travels on its stdout
sys.stdout.write(f'{float(np.abs(y.astype("float32").asnumpy() - ref).max())} {float(np.abs(ref).max())}\\n')
"""


def probe_bf16(timeout: float = 120.0) -> Tuple[bool, str]:
    """Run a tiny bfloat16 ``FullyConnected`` in a child process (never this one: a missing
    tile permission kills the process that tries).

    The inputs are exact in bfloat16 and their products sum exactly in float32, so a working
    kernel's output differs from numpy's by its final rounding to bfloat16 only (< 2**-7
    relative).

    Returns
    -------
    ran : bool
        The kernel ran and agreed with numpy within 1 % of the largest output.
    detail : str
        The max difference, or the child's last error line (or how it died).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH')) if p))
    try:
        done = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f'timed out after {timeout:.0f} s'
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        return False, lines[-1] if lines else f'exit status {done.returncode}'
    diff, scale = (float(v) for v in done.stdout.split()[-2:])
    return diff <= 0.01 * scale, f'max |bf16 - numpy| = {diff:.3g} (outputs up to {scale:.3g})'
