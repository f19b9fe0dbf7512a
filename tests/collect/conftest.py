"""Fixtures for the collect tests (the real parquet sink lives in ``_sink.py``)."""

from __future__ import annotations
