"""Memory figures: the peak RSS is the process's own and can be restarted per measurement."""

import sys

import numpy as np
import pytest

from mlx_slm import stats


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs")
def restart_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def test_peak_rss_sees_a_spike_and_restarts_after_clear_refs():
    restart_peak_rss()  # earlier tests may have left a higher peak
    before = stats.peak_rss_bytes()
    spike = np.ones(40_000_000)  # 320 MB, touched
    assert stats.peak_rss_bytes() >= before + 300e6
    del spike
    restart_peak_rss()
    assert stats.peak_rss_bytes() < before + 100e6


def test_memory_report_has_the_figures_in_gb():
    report = stats.memory_report()
    assert report["rss_gb"] > 0.01 and report["peak_memory_gb"] >= 0
    assert stats.current_rss_bytes() <= stats.peak_rss_bytes() + 4096
