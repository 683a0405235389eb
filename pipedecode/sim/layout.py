"""Where a model's layers, weights and KV cache live on N GPUs: pipeline stages or tensor shards.

Owns `split_layers` (contiguous stages balanced from the cost model), `PipelineLayout` (each
stage's layers and weights, the global KV block pool the tightest stage allows),
`TensorLayout` (weights and KV heads split over the GPUs) and `replicas_for` (how many
data-parallel replicas a GPU count needs when the model has fewer layers or heads than GPUs).
Refuses, with the reason, a layout whose weights do not fit a GPU. Knows nothing of
schedules or links.

Memory per GPU: `DEFAULT_MEMORY_UTILIZATION` of the device (the planner's 90%) holds the GPU's
weights and its KV blocks; activations and workspace are not modelled. A pipeline stage holds
its layers, stage 0 the embedding and the last stage the LM head (counted untied); it holds
the KV of its own layers for every block id, so the pool has as many blocks as the stage with
the least room for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipedecode.errors import InsufficientMemoryError
from pipedecode.models import ModelShape, gib
from pipedecode.planner.problem import DEFAULT_MEMORY_UTILIZATION
from pipedecode.profiles.schema import DeviceProfile


def split_layers(num_layers: int, num_stages: int, layer_us: float,
                 head_us: float) -> tuple[int, ...]:
    """Layers per stage, contiguous, minimising the slowest stage when every layer costs
    `layer_us` and the last stage also runs the head (`head_us`): the last stage takes k
    layers, the others share the rest as evenly as they can (the first ones one more)."""
    if not 1 <= num_stages <= num_layers:
        raise ValueError(f"{num_layers} layers cannot fill {num_stages} stages; use 1 to "
                         f"{num_layers} stages")
    if num_stages == 1:
        return (num_layers,)
    best = None
    for k in range(num_layers - num_stages + 1, 0, -1):      # the most even split wins ties
        rest = num_layers - k
        slowest = max(-(-rest // (num_stages - 1)) * layer_us, k * layer_us + head_us)
        if best is None or slowest < best[0]:
            best = (slowest, k)
    k, others = best[1], num_stages - 1
    rest = num_layers - k
    return tuple(rest // others + (1 if i < rest % others else 0) for i in range(others)) + (k,)


@dataclass(frozen=True)
class PipelineLayout:
    """One pipeline replica: stage i holds layers[i] layers and weight_bytes[i] of weights;
    num_blocks KV blocks (the null block included) of block_size tokens, global ids."""

    model: ModelShape
    profile: DeviceProfile
    layers: tuple[int, ...]
    weight_bytes: tuple[int, ...]
    num_blocks: int
    block_size: int

    @property
    def num_stages(self) -> int:
        return len(self.layers)


@dataclass(frozen=True)
class TensorLayout:
    """One tensor-parallel replica of num_gpus GPUs, each holding 1/num_gpus of the weights and
    kv_heads_per_gpu KV heads (replicated where there are more GPUs than KV heads)."""

    model: ModelShape
    profile: DeviceProfile
    num_gpus: int
    weight_bytes_per_gpu: int
    kv_heads_per_gpu: int
    num_blocks: int
    block_size: int


def _usable(profile: DeviceProfile) -> int:
    return int(profile.memory_bytes * DEFAULT_MEMORY_UTILIZATION)


def _blocks(profile: DeviceProfile, weights: int, kv_bytes_per_token: int, block_size: int,
            what: str, model: ModelShape) -> int:
    room = _usable(profile) - weights
    blocks = room // (kv_bytes_per_token * block_size) if room > 0 else 0
    if blocks < 2:
        raise InsufficientMemoryError(
            f"{model.name}: {what} holds {gib(weights)} of weights, which leaves no room for a "
            f"KV cache in the {gib(_usable(profile))} usable of one {profile.name} "
            f"({DEFAULT_MEMORY_UTILIZATION:.0%}); use more GPUs")
    return int(blocks)


def pipeline_layout(model: ModelShape, profile: DeviceProfile, num_stages: int, *,
                    layer_us: float, head_us: float, block_size: int = 16) -> PipelineLayout:
    """Stages balanced for a micro-batch whose layers cost `layer_us` and head `head_us`."""
    layers = split_layers(model.num_layers, num_stages, layer_us, head_us)
    table = model.vocab_size * model.hidden_size * model.dtype_bytes
    weights = tuple(n * model.weight_bytes_per_layer() + (table if i == 0 else 0)
                    + (table if i == num_stages - 1 else 0) for i, n in enumerate(layers))
    per_layer_token = model.kv_bytes_per_token() // model.num_layers
    blocks = min(_blocks(profile, w, n * per_layer_token, block_size,
                         f"pipeline stage {i} of {num_stages} ({n} layers)", model)
                 for i, (n, w) in enumerate(zip(layers, weights)))
    return PipelineLayout(model, profile, layers, weights, blocks, block_size)


def tensor_layout(model: ModelShape, profile: DeviceProfile, num_gpus: int, *,
                  block_size: int = 16) -> TensorLayout:
    """Heads split over the GPUs: num_heads divisible by num_gpus, and KV heads divisible by
    it or it by them (then each GPU holds one KV head, replicated)."""
    kv = model.num_kv_heads
    if model.num_heads % num_gpus or (kv % num_gpus and num_gpus % kv):
        raise ValueError(f"{model.name}: {model.num_heads} query and {kv} KV heads cannot be "
                         f"split over {num_gpus} GPUs by tensor parallelism")
    heads = max(1, kv // num_gpus)
    weights = -(-model.weight_bytes() // num_gpus)
    per_token = model.kv_bytes_per_token() // kv * heads
    blocks = _blocks(profile, weights, per_token, block_size,
                     f"each of {num_gpus} tensor-parallel GPUs", model)
    return TensorLayout(model, profile, num_gpus, weights, heads, blocks, block_size)


def replicas_for(num_gpus: int, most_per_replica: int) -> tuple[int, int]:
    """(replicas, GPUs per replica): the largest replica of at most `most_per_replica` GPUs
    that divides num_gpus (data parallelism over the rest)."""
    if num_gpus < 1:
        raise ValueError(f"the GPU count must be positive, got {num_gpus}")
    per = max(d for d in range(1, min(num_gpus, most_per_replica) + 1) if num_gpus % d == 0)
    return num_gpus // per, per
