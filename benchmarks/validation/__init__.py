"""Real-data validation suite: hbm's fits against references computed without hbm (see README.md)."""
