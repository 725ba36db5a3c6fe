"""The benchmark's results: `results.json` and RESULTS.md of a grid (`results.py`), the poisoned grid's RESULTS
sections and dose-response figure (`poison_report.py`), and the figures (`figures.py`). Uses `bench.analysis`
and `bench.grid`."""
