"""The one exception type the CLI turns into a single readable line and a non-zero exit."""


class MlsdError(RuntimeError):
    """A failure the user can act on; its message says what to do."""
