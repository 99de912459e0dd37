"""Tests of the local aggregator."""
