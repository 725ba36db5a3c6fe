"""The environment record: what "auto" resolved to and what ran it, stored with every run."""

from __future__ import annotations

import peft
import torch
import transformers

from traitwatch.models import load_model
from traitwatch.models.environment import describe_environment


def test_the_record_has_the_resolved_dtype_device_hardware_and_versions():
    lm = load_model("tiny-random", device="cpu", dtype="bfloat16")
    env = describe_environment(lm.model)
    assert (env["device"], env["dtype"]) == ("cpu", "bfloat16")  # from the weights, never "auto"
    assert env["device_name"] and env["device_name"] == env["cpu"]
    assert (env["torch"], env["transformers"], env["peft"]) == (torch.__version__, transformers.__version__,
                                                                 peft.__version__)
    assert describe_environment(device="cpu", dtype=torch.float32)["dtype"] == "float32"
