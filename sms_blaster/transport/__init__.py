"""How a request reaches the provider: the `Transport` seam (`base.py`), the one classification
of transport failures (`failures.py`), and two transports behind the seam: `lean.py` (our own
keep-alive HTTP/1.1 client, the default) and `aiohttp_transport.py` (for proxies)."""
