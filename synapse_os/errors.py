"""The two kinds of failure the CLI distinguishes (see DESIGN.md, Conventions)."""


class SynapseError(Exception):
    """Base class: the message is one clear sentence meant for the user."""

    exit_code = 1


class UserError(SynapseError):
    """Bad input the user can fix (file:line, key, device...): exit code 2."""

    exit_code = 2


class OperationError(SynapseError):
    """A failed operation (a tool crashed, a VM did not boot): exit code 1."""

    exit_code = 1
