"""Provider adapters: pure request building and answer parsing, one transport for all."""
