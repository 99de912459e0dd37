"""Helpers shared by the test packages: servers, ports, waiting, fakes."""
