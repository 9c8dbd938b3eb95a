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


def test_library_text_keeps_the_words_and_drops_what_could_be_a_header_value():
    from ctssl.data.guard import library_text

    assert library_text(AttributeError("Sequence does not have the required attributes for a Pixel Measures "
                                       "Sequence.")) == \
        "Sequence does not have the required attributes for a Pixel Measures Sequence."
    planted = ("Referenced instance '1.2.840.113619.2.55.3.6046' of DOE^JANE (Test Hospital) on 20200202 at "
               "101010.123: 'SliceThickness' missing")
    text = library_text(ValueError(planted))
    for value in ("1.2.840", "DOE", "JANE", "Test", "Hospital", "20200202", "101010"):
        assert value not in text, (value, text)
    assert text.startswith("Referenced instance ... of ...") and "SliceThickness" in text
    assert library_text(KeyError()) == "KeyError"
    assert len(library_text(ValueError("word " * 100))) == 200
