"""shiftdown's shared core: settings, database schema, taxonomy, prices and errors.

Everything above this package (models, workers, producers, cli) imports from here; this
package imports from none of them.
"""

__version__ = "0.1.0"
