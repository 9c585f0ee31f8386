"""sms-blaster benchmarks (`make bench`); results are written to benchmarks/RESULTS.md."""
