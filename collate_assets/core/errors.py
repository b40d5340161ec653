"""The one exception type the engine raises for problems a user can fix."""


class CollateError(Exception):
    """A problem with the input, the tokenizer or the settings, with a message fit for a user."""
