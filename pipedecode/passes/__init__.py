"""Graph passes: capture (TorchDynamo) -> classify (node.meta["pipedecode"]) -> partition.

capture.py   one decode or prefill step of a Llama-family model as a torch-IR fx graph
cost.py      FLOPs and bytes moved per node, from its shapes
classify.py  the policy: roofline bound per node and the kind of stage each node joins
partition.py the mechanism: split_module into ordered compute/memory stages
report.py    the `pipedecode analyze` report (JSON and text table)
"""

from pipedecode.passes.capture import CapturedGraph, capture_decode, capture_prefill, meta_model
from pipedecode.passes.classify import META_KEY, NodeClass, classify
from pipedecode.passes.partition import Stage, StagedGraph, partition

__all__ = ["META_KEY", "CapturedGraph", "NodeClass", "Stage", "StagedGraph", "capture_decode",
           "capture_prefill", "classify", "meta_model", "partition"]
