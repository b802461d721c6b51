"""`python -m crops.cli ...`: the same as the `crops` console script."""

from crops.cli import main

main()
