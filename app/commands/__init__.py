"""Headless sub-commands of ``xmedgpt``, one module each.

Every module here defines ``register(subparsers)`` which adds its sub-parser and
sets ``func`` (taking the parsed ``argparse.Namespace``, returning an exit code).
Modules are discovered by :func:`app.cli.build_parser`, so adding a command is
adding a file.
"""
