"""The composition root: the Starlette app, the DIMSE AE start-up, the `arca` CLI."""
