"""`python -m misalign.cli`: the command line."""
from misalign.cli import main

if __name__ == "__main__":
    main()
