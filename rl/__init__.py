# Before anything can import transformers: keep scikit-learn out of it (rl/fast_start.py says why).
from rl import fast_start

fast_start.install()
