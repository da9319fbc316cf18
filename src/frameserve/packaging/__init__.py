"""Making and checking model packages: a test run of the network, then an atomic write.

Reading a package into a model is :mod:`frameserve.catalogue.packages`; this runs one.
:func:`check_package` (``frameserve check``) loads a package's network the way the server will,
runs it once on a test frame and checks what it returns; :func:`write_package`
(``frameserve package``, ``frameserve export``) writes a package atomically, after that check::

    report = check_package("studio_models/soften")
    print(report.summary())
"""

from __future__ import annotations

from frameserve.packaging.check import check_package
from frameserve.packaging.report import CheckReport
from frameserve.packaging.write import write_package

__all__ = ["CheckReport", "check_package", "write_package"]
