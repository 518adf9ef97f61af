"""`python -m streams ...` is the `tickflow` command (streams/cli.py)."""

from streams.cli import main

if __name__ == "__main__":
    main()
