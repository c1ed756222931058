"""moa_edge/harness/cpuid_mask.py: a child process on this AVX-512 machine sees an AVX2 one
(numpy's dispatch, which reads CPUID, is the witness), and a real fault still kills it."""
import json
import signal
import subprocess
import sys

import pytest

from moa_edge.harness.cpuid_mask import AVX512_PROBE, avx2_env


def _features(env=None) -> dict:
    probe = subprocess.run([sys.executable, "-c", AVX512_PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(probe.stdout)


@pytest.fixture(scope="module")
def masked_env(tmp_path_factory):
    if not _features()["AVX512F"]:
        pytest.skip("this host has no AVX-512 to hide")
    if "cpuid_fault" not in open("/proc/cpuinfo").read().split():
        pytest.skip("this CPU cannot make CPUID fault")
    return avx2_env(tmp_path_factory.mktemp("cpuid"))


def test_a_masked_child_sees_avx2_without_avx512(masked_env):
    assert _features(masked_env) == {"AVX2": True, "FMA3": True, "AVX512F": False}
    assert _features()["AVX512F"]  # the parent's children, unmasked, still see it


def test_a_real_segfault_still_kills_the_masked_child(masked_env):
    crash = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], env=masked_env,
                           capture_output=True)
    assert crash.returncode == -signal.SIGSEGV
