"""What the tests of the shortcuts share (test_resp_scan, test_resp_count_flat, test_lane_replies,
test_rules_fast, test_scripts_fast, test_session_fast: once one file, test_fastpath.py).

Each shortcut exists only for speed; those tests run random inputs through the shortcut and
through the general code and require the same bytes, frames and verdicts. Every test of theirs
runs with the C scan and with its Python twin (`BOTH_SCANS`: conftest.both_scans).
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

BOTH_SCANS = pytest.mark.usefixtures("both_scans")

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
