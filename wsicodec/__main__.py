"""``python -m wsicodec`` is the ``wsicodec`` command."""
from wsicodec.cli import main

main()
