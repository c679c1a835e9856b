"""``python -m fxprune.cli``: the same as the ``fxprune`` console script."""

from fxprune.cli import main

main()
