"""The ``logq`` commands, grouped by the table they read; registered in :mod:`cli.app`."""
