"""Benchmarks behind `toonify bench`: each module measures one hot path, the CLI prints.

Figures and how they were taken: bench/README.md.
"""
