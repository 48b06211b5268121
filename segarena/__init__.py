"""segarena: a semantic-segmentation competition toolkit."""

import logging

__version__ = "0.1.0"

# The library logs and never prints; the command line shows the records (cli.common.show_logs)
logging.getLogger(__name__).addHandler(logging.NullHandler())
