"""The CPU decision of bort.hardware: fake /proc/cpuinfo texts for every case, the real syscall
only where the CPU has AMX, and the decision against what MXNet actually does (child process)."""
import subprocess
import sys

import pytest

from bort import hardware
from bort.hardware import AMX_ISA, ISA_ENV, CpuSupport, cpu_flags, decide

BASE = 'fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2'
AVX512 = BASE + ' avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni'
BF16 = AVX512 + ' avx512_bf16'
AMX = BF16 + ' amx_bf16 amx_tile amx_int8'


def _cpuinfo(tmp_path, flags, cores=2):
    text = ''.join(f'processor\t: {i}\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\n'
                   for i in range(cores))
    path = tmp_path / 'cpuinfo'
    path.write_text(text)
    return path.read_text()


class _Request:
    def __init__(self, granted, detail=''):
        self.granted, self.detail, self.calls = granted, detail, 0

    def __call__(self):
        self.calls += 1
        return self.granted, self.detail


def test_flags_are_the_intersection_over_processors():
    text = 'processor : 0\nflags : a b c\n\nprocessor : 1\nflags\t\t: b c d\nbogomips : 1\n'
    assert cpu_flags(text) == {'b', 'c'}
    assert cpu_flags('processor : 0\nFeatures : fp asimd\n') == frozenset()


def test_avx2_keeps_float32_and_never_asks(tmp_path):
    env, request = {}, _Request(True)
    got = decide(_cpuinfo(tmp_path, BASE), env, request)
    assert got == CpuSupport(False, False, False, False, got.reason)
    assert request.calls == 0 and ISA_ENV not in env
    assert got.reason.startswith('float32') and 'AVX2' in got.reason


def test_avx512_without_bf16_keeps_float32(tmp_path):
    got = decide(_cpuinfo(tmp_path, AVX512), {}, _Request(True))
    assert not got.bf16_usable and 'emulate' in got.reason


def test_avx512_bf16_without_amx(tmp_path):
    env, request = {}, _Request(True)
    got = decide(_cpuinfo(tmp_path, BF16), env, request)
    assert (got.has_amx, got.has_avx512_bf16, got.amx_enabled, got.bf16_usable) == \
        (False, True, False, True)
    assert request.calls == 0 and ISA_ENV not in env and got.bf16_hardware


def test_amx_granted_sets_the_isa_cap(tmp_path):
    env, request = {}, _Request(True)
    got = decide(_cpuinfo(tmp_path, AMX), env, request)
    assert request.calls == 1 and env[ISA_ENV] == AMX_ISA
    assert got.amx_enabled and got.bf16_usable and got.reason.startswith('AMX')


def test_amx_refused_by_linux_falls_back_to_avx512_bf16(tmp_path):
    env = {}
    got = decide(_cpuinfo(tmp_path, AMX), env, _Request(False, 'EINVAL'))
    assert ISA_ENV not in env and not got.amx_enabled and got.bf16_usable
    assert 'EINVAL' in got.reason


def test_a_cap_the_user_set_is_kept(tmp_path):
    env = {ISA_ENV: 'avx2'}
    got = decide(_cpuinfo(tmp_path, AMX), env, _Request(True))
    assert env[ISA_ENV] == 'avx2' and not got.amx_enabled and not got.bf16_usable
    assert 'set by you' in got.reason
    env = {ISA_ENV: 'AVX512_CORE_BF16'}
    got = decide(_cpuinfo(tmp_path, AMX), env, _Request(True))
    assert env[ISA_ENV] == 'AVX512_CORE_BF16' and not got.amx_enabled and got.bf16_usable


def test_user_amx_cap_without_tile_state_is_refused(tmp_path):
    """oneDNN would run AMX instructions Linux has not enabled: the process would die."""
    env = {ISA_ENV: AMX_ISA}
    got = decide(_cpuinfo(tmp_path, AMX), env, _Request(False, 'ENOSYS'))
    assert not got.bf16_usable and not got.amx_enabled and 'ENOSYS' in got.reason


def test_require_bf16_is_one_line(monkeypatch):
    monkeypatch.setattr(hardware, '_DECISION', CpuSupport(False, False, False, False,
                                                          'float32: CPU lacks bfloat16'))
    with pytest.raises(hardware.UnsupportedHardware, match='CPU lacks bfloat16') as err:
        hardware.require_bf16('--dtype bfloat16')
    assert '\n' not in str(err.value)


def test_importing_bort_decided_before_mxnet():
    """A fresh interpreter: ``import bort`` makes the decision; MXNet is not loaded by it."""
    code = ('import sys, bort, bort.hardware as h; '
            'print(h._DECISION is not None, "mxnet" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ['True', 'False']


def _real_flags():
    with open('/proc/cpuinfo', encoding='utf-8') as f:
        return cpu_flags(f.read())


@pytest.mark.skipif(not {'amx_tile', 'amx_bf16'} <= _real_flags(),
                    reason='the CPU has no AMX: the tile-state syscall is not exercised')
def test_real_tile_request_is_granted():
    granted, detail = hardware.request_amx_tiles()
    assert granted, detail
    assert hardware.cpu_support().amx_enabled


def test_decision_agrees_with_mxnet():
    """A bfloat16 FullyConnected runs (and matches numpy) exactly where bf16 is called usable;
    elsewhere MXNet refuses it (on AVX2: no oneDNN primitive)."""
    ran, detail = hardware.probe_bf16()
    assert ran == hardware.cpu_support().bf16_usable, detail
