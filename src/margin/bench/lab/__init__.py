"""Offline evaluation code the benchmarks run: nothing here is imported by ``margin serve``.

It lives under ``bench`` so that the serving packages (``cache``, ``batching``, …) hold only
what the gateway runs, and may import the benchmark helpers without breaking the layering rule.
"""
