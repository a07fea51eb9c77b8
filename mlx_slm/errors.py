"""The one exception type for problems the user can fix; the CLI prints it as one line."""


class SlmError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


class PromptTooLong(SlmError):
    """A prompt that leaves no room to generate in the model's context."""


class InvalidPrompt(SlmError):
    """A prompt the model cannot take as given (token ids outside the vocabulary)."""
