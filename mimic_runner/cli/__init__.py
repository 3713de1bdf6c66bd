"""Command-line entry points. They parse arguments and call library functions, nothing more."""
