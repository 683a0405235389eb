"""Errors pipedecode raises on purpose: each says what went wrong and what to do.

The CLI prints one line for any of these and exits non-zero; library users catch them
by class. They subclass ValueError where the cause is a bad argument, so code that
already catches ValueError keeps working.
"""


class PipedecodeError(Exception):
    """Base class of every error pipedecode raises deliberately."""


class UnsupportedModelError(PipedecodeError, ValueError):
    """The model is not a Llama-family decoder pipedecode knows how to split."""


class CaptureError(PipedecodeError):
    """TorchDynamo could not capture the decode step as one graph."""


class ProfileError(PipedecodeError, ValueError):
    """A device profile is missing, malformed or of the wrong version."""


class ScheduleError(PipedecodeError, ValueError):
    """A schedule file is malformed, of the wrong version, or for another model."""


class PlanningError(PipedecodeError):
    """The planner found no feasible schedule (for example the KV cache does not fit)."""


class PartitionUnavailableError(PipedecodeError):
    """SM partitions (CUDA green contexts) cannot be made here; run sequentially."""


class WorkloadError(PipedecodeError, ValueError):
    """A batch, context length or prompt that cannot be run (zero, negative, too long)."""


class InsufficientMemoryError(PipedecodeError):
    """A model or its caches need more memory than the device it would run on has free."""
