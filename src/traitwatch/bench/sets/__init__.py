"""The benchmark's training sets: the perturbation sets and poisoned sets (`perturbations.py`), poison in a
base's own style (`styled_poison.py`), and the check that a poison source does not hold the evaluation's
questions (`poison_check.py`). The lowest room of `bench`: it imports no other part of it."""
