"""``python -m workers.cli``: the ``taskyard`` command."""

from workers.cli.main import main

main()
