"""`python cli.py ...` is `mmkd ...` (the command line lives in mmkd/cli.py)."""
from mmkd.cli import main

if __name__ == "__main__":
    main()
