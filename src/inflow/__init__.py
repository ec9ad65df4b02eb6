"""inflow: TracIn influence and mislabel detection for image classifiers.

The Snakemake workflow at the repository root calls one function of this package per rule;
every piece of math and I/O lives here so that tests can call it directly.
"""

__version__ = "0.1.0"
