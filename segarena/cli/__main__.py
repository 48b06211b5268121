"""`python -m segarena.cli`: the same as the `segarena` command."""

from segarena.cli.app import app

app(prog_name="segarena")
