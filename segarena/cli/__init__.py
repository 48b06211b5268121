"""The `segarena` command line (the last stage: it imports the others, nothing imports it)."""
