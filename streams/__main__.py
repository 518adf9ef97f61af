"""`python -m streams ...` is the `tickflow` command (streams/tools/cli.py)."""

from streams.tools.cli import main

if __name__ == "__main__":
    main()
