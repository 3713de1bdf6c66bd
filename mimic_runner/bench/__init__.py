"""Benchmarks of the real training code (``mimic-bench``): step times, ensemble strategies,
Grad-CAM throughput, data loading and model FLOPs utilisation. Results: BENCHMARKS.md."""
