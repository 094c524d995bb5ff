"""`python -m app` runs the snapsync command line."""

from __future__ import annotations

from app import cli

if __name__ == "__main__":
    cli.main()
