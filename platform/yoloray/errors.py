"""The error every command prints as one line: a mistake in what the user asked for (a flag, a path, an archive
with nothing to read), raised wherever it is found, caught by the command's entry point (cli.main,
tune.sweep.main), which prints `yoloray CMD: MESSAGE` and exits with status 2."""


class UserError(Exception):
    """Something the user can fix; printed as one line, no traceback."""
