"""The project's one error family: anything a user can cause and fix.

The CLI turns a :class:`NetadaptError` into one red line and exit code 1; any other
exception is a bug and keeps its traceback.
"""


class NetadaptError(Exception):
    """Base class of every error the user can fix; the message says what and how."""


class SpecError(NetadaptError):
    """A network spec is malformed; the message names the field (``blocks[3].exp``)."""


class WeightsError(NetadaptError):
    """A weights file does not fit the spec it is loaded into."""


class ExportError(NetadaptError):
    """ONNX export failed or the exported model does not match PyTorch."""


class DataError(NetadaptError):
    """A dataset is missing, malformed or too small; the message names the file or folder."""


class LatencyError(NetadaptError):
    """A latency table or device is missing, stale or broken; the message says the fix."""


class TrainError(NetadaptError):
    """A training option is invalid (steps, learning rate, optimizer, device, classes)."""
