"""The ``shiftdown`` command: one module per command group."""
