"""``python -m common`` runs the ``minicdn`` console script (useful where the script is not on PATH)."""

from common.cli import main

main(prog_name="minicdn")
