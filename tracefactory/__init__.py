"""tracefactory: a reasoning-trace data factory.

The library is pure (no Prefect, no GPU needed to import it); `flows/` wires it into Prefect.
"""

__version__ = "0.1.0"
