"""The one exception type a user should ever see from inflow."""


class InflowError(Exception):
    """A problem with the user's input (config, data, files) that the user can fix.

    The message is one line that names the file or config key and says what to do.
    Workflow scripts print it without a traceback (see :mod:`inflow.workflow.smk`).
    """
