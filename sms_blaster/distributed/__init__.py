"""Distributed mode: senders on many hosts sharing one campaign and one rate limit through Redis."""
