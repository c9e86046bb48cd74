"""Benchmarks: long runs that print ratios measured in one run; results go to BENCHMARKS.md.

A regular package, so that ``benchmarks.*`` resolves to these files even where another
distribution (opacus) installs a top-level ``benchmarks`` package of its own.
"""
