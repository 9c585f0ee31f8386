"""Where the receiver keeps callbacks: `base` (what every store does), `sqlite` and `redis`."""
