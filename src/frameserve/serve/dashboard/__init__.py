"""The web dashboard the HTTP door serves at ``/``: queue, models, training, try a model.

One page of plain HTML, CSS and JavaScript shipped in this package (``static/``, with the
uPlot charting library vendored under ``static/vendor/``): nothing is fetched from anywhere
but this server. The page signs in with a token, calls the same HTTP API every client calls,
and keeps itself current over one Server-Sent Events stream per page. ``docs/dashboard.md``
is the user's guide; :mod:`frameserve.serve.dashboard.route` lists the paths.
"""

from __future__ import annotations

from frameserve.serve.dashboard.events import EventStreams
from frameserve.serve.dashboard.route import Dashboard

__all__ = ["Dashboard", "EventStreams"]
