"""Every use of another library's internals, one module per library.

The rest of the package reaches pytest-benchmark, pytest-xdist and transformers beyond their
public API only through these modules; tests/test_integrations.py fails when one of those
libraries changes what its module relies on.
"""
