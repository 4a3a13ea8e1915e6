"""`python cli.py ...` is `mmkd ...` (the command line lives in the package mmkd/cli/)."""
from mmkd.cli import main

if __name__ == "__main__":
    main()
