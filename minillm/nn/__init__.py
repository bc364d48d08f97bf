"""minillm.nn: layers and their initialisers."""
from . import init
