"""`UserError`: bad input from the user. The command line (wavelm/cli.py) prints it as one line
on stderr with exit code 2; it lives here, importing nothing, so that the commands raise it
without importing the CLI that loads them."""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""
