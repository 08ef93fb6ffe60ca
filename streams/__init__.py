# The compiled build of this package's per-event modules comes first when it matches the sources
# (leadpulse/native.py).
from leadpulse.native import native_path

__path__ = native_path(__name__, __path__)
