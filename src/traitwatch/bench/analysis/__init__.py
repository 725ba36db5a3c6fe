"""The benchmark's analyses, read from what the grid stored: emergent detection (`detection.py`), the poisoned
grid's dose-response and detection (`poison.py`), and row-level screening of the poison grid's sets: reading
each distinct row once (`row_features.py`), scoring the screens held out by poison type and base
(`screening_analysis.py`), and `--screen-rows` with its closed loop (`screening.py`). Uses `bench.grid` and
`bench.sets`; never `bench.results`."""
