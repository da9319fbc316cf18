"""The ``frameserve`` command line: one module per command family, sharing flags and progress.

Only this package sets up logging handlers; it maps flags onto the settings objects.
"""
