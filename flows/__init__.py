"""Prefect flows over the TrackGo libraries (thin glue; the libraries never import Prefect)."""
from flows import prefect_tuning as _prefect_tuning

_prefect_tuning.install()
