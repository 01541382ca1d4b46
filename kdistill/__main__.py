"""``python -m kdistill ...``: the same command line as the ``kdistill`` script."""

from kdistill.cli import main

if __name__ == "__main__":
    main(prog_name="kdistill")
