# Before anything can import transformers: keep scikit-learn out of it (rl/lean_imports.py says why).
from rl import lean_imports

lean_imports.install()
