"""The ``weft`` command line: parsing and printing only; the work is done by ``weft.client``."""
