"""Tests that run the examples in examples/ against a real aggregator and real gateways."""
