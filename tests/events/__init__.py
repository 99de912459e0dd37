"""Tests of the gateway's events: SSE, replay, gaps, long-poll, against a real aggregator."""
