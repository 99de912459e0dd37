"""Unit tests of the upstream dialects, their shared transport, the session and the notification channel."""
