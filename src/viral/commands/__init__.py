"""Command-line entry points; each module registers its sub-commands with the `viral` parser."""
