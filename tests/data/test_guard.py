"""The guards that isolate untrusted files (data.guard): the time budget, library messages counted without
their text."""

from __future__ import annotations

import logging
import time
import warnings

import pytest

from ctssl.data.guard import BudgetExceeded, LibraryMessages, time_budget


def test_time_budget_stops_a_slow_block():
    start = time.perf_counter()
    with pytest.raises(BudgetExceeded, match="longer than 0.2 s"):
        with time_budget(0.2):
            while True:
                pass
    assert time.perf_counter() - start < 2
    with time_budget(5):              # a block within its budget is untouched, and the alarm is cleared
        pass
    time.sleep(0.05)


def test_library_messages_are_counted_without_their_text(caplog):
    messages = LibraryMessages()
    with messages.capture():
        warnings.warn("Invalid value for VR UI: '1.2.03.SECRET'", UserWarning)
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Doe^SECRET'")
    counts = messages.take()
    assert sum(counts.values()) == 2 and not any("SECRET" in k for k in counts)
    assert "SECRET" not in caplog.text
