"""prefdesk, the preference desk: nightly preference tuning that keeps the model on a leash.

The core library (this folder) has no Prefect in it. The layers above it live as folders
at the repository root and install under this namespace (see pyproject's package-dir):
``prefdesk.validations`` (the data desk), ``prefdesk.plugins`` (the built-in optimizers),
``prefdesk.tasks`` and ``prefdesk.flows`` (the Prefect layer). docs/design.md has the design.
"""
