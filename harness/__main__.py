"""`python -m harness` == `kobench`."""
from harness.cli import main

main()
