"""The Python SDK's old home, kept so that scripts written as ``from j1mskyd.client import
Agency`` still run: the SDK itself is the ``j1msky`` package (sdk/python/j1msky, shipped
with the daemon and on its own as the ``j1msky`` distribution).  Nothing is defined here."""

from j1msky import *  # noqa: F401,F403 - the whole public API, under its old name
from j1msky import __all__  # noqa: F401
