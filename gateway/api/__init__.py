"""Trainer-facing routes, one module per resource."""
