"""Memory figures: the peak RSS is the process's own and can be restarted per measurement."""

import sys

import mlx.core as mx
import numpy as np
import pytest

import mlx_slm.memory as stats


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="restarting the peak needs Linux's /proc/self/clear_refs")
def test_peak_rss_sees_a_spike_and_restarts_after_clear_refs():
    assert stats.restart_peak_rss() == "cell"  # earlier tests may have left a higher peak
    before = stats.peak_rss_bytes()
    spike = np.ones(40_000_000)  # 320 MB, touched
    assert stats.peak_rss_bytes() >= before + 300e6
    del spike
    stats.restart_peak_rss()
    assert stats.peak_rss_bytes() < before + 100e6


def test_memory_report_has_the_figures_in_gb():
    stats.reset_mlx_peak()
    block = mx.ones((25_000_000,), dtype=mx.float32)  # 100 MB through MLX's allocator
    mx.eval(block)
    report = stats.memory_report()
    assert report["peak_memory_gb"] >= 0.1
    assert report["peak_rss_gb"] >= report["peak_memory_gb"] or sys.platform == "darwin"
    assert stats.current_rss_bytes() <= stats.peak_rss_bytes() + 4096
