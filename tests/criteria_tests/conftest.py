import os
import sys

# criteria_brute.py (the brute-force references) is imported by basename from this folder.
sys.path.insert(0, os.path.dirname(__file__))
