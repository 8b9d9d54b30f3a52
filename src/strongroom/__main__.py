"""Allows `python -m strongroom`."""

from strongroom.cli.handover import main

main()
