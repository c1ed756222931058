"""The one exception type a user ever sees: a sentence naming what is wrong."""


class MoaEdgeError(Exception):
    """Bad input or an environment problem; the CLI prints it and exits non-zero."""
