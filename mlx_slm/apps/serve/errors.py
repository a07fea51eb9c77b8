"""The worker's engine errors: what went wrong with a request, in the engine's words.
The HTTP layer alone maps them to statuses (http.STATUSES)."""

from mlx_slm.errors import SlmError


class ModelNotServed(SlmError):
    """A request named a model this server does not serve."""


class ModelNotNamed(SlmError):
    """A request named no model while several are served."""


class InvalidLogitBias(SlmError):
    """A logit_bias entry for a token id outside the vocabulary."""


class ShuttingDown(SlmError):
    """The server takes no new requests."""


class WontFit(SlmError):
    """A request whose KV cache could never fit in the memory available."""


class InternalError(SlmError):
    """A failure inside the worker; the server goes on."""
