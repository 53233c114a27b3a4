"""User-facing errors. The command line turns them into one line on stderr and exit code 2;
the add-on shows them in Blender's report area."""


class NeuralLabelError(Exception):
    """Bad input the user can fix: the message names the file or value and the problem."""


class NotImplementedYet(NeuralLabelError):
    """A subcommand whose issue has not landed yet (never a fake success)."""
