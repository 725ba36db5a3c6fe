"""Running the benchmark's grid: the plan and plan files (`plan.py`, `plan_file.py`), what a plan will cost
(`dry_run.py`), the resumable runs (`runner.py`) with their labels (`labels.py`) and recorded features
(`features.py`), shards of the grid over processes (`shards.py`), and the screen scores a run on a screened
set names its suspects from (`row_scores.py`). Uses `bench.sets`; never the analyses or results above it."""
