"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input the user can fix: the message says what is wrong and how to fix it, on one line."""
