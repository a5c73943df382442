"""``python -m weft_mcp``: the same as the ``weft-mcp`` console script."""

from weft_mcp.server import main

main()
