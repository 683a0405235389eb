"""Llama-family models: their shapes, named presets, and how to build or load them.

Owns `ModelShape` (the frozen numbers every other part of pipedecode plans with), the
preset table (tiny configs for tests, real shapes for planning without weights) and the
check that a model is a family pipedecode supports. Knows nothing of graphs, devices or
schedules.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from pipedecode.errors import UnsupportedModelError

# model_type -> (config class name, model class name) in transformers.
SUPPORTED_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}
SUPPORTED_ATTENTION = ("sdpa", "eager")

_TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=512)

# Real shapes are those of the published configs; weights are never downloaded for them.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(model_type="llama", **_TINY),
    "tiny-llama-mha": dict(model_type="llama", **{**_TINY, "num_key_value_heads": 4}),
    "tiny-mistral": dict(model_type="mistral", sliding_window=None, **_TINY),
    "tiny-qwen2": dict(model_type="qwen2", **_TINY),
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       head_dim=128, vocab_size=32000, max_position_embeddings=4096,
                       rms_norm_eps=1e-5),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, vocab_size=128256, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=500000.0),
    "llama-3-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672,
                        num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                        head_dim=128, vocab_size=128256, max_position_embeddings=8192,
                        rms_norm_eps=1e-5, rope_theta=500000.0),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, vocab_size=32000, max_position_embeddings=32768,
                       rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       head_dim=128, vocab_size=152064, max_position_embeddings=32768,
                       rms_norm_eps=1e-6, rope_theta=1000000.0),
}
DEFAULT_PRESET = "tiny-llama"


@dataclass(frozen=True)
class LinearShape:
    """One linear layer of a decoder layer: y[tokens, n] = x[tokens, k] @ w[n, k]^T."""

    name: str
    n: int
    k: int


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama-family decoder that cost models and kernels need."""

    name: str
    family: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    qkv_bias: bool = False
    dtype_bytes: int = 2

    def __post_init__(self) -> None:
        if self.family not in SUPPORTED_FAMILIES:
            raise UnsupportedModelError(_unsupported_message(self.family))
        for field in ("hidden_size", "intermediate_size", "num_layers", "num_heads",
                      "num_kv_heads", "head_dim", "vocab_size", "dtype_bytes"):
            if getattr(self, field) <= 0:
                raise ValueError(f"ModelShape.{field} must be positive, got {getattr(self, field)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelShape: num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for MHA)."""
        return self.num_heads // self.num_kv_heads

    def linears(self) -> tuple[LinearShape, ...]:
        """The linear layers of one decoder layer, q/k/v and gate/up fused as kernels run them."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return (
            LinearShape("qkv_proj", q + 2 * kv, self.hidden_size),
            LinearShape("o_proj", self.hidden_size, q),
            LinearShape("gate_up_proj", 2 * self.intermediate_size, self.hidden_size),
            LinearShape("down_proj", self.hidden_size, self.intermediate_size),
        )

    def weight_bytes_per_layer(self) -> int:
        return sum(s.n * s.k for s in self.linears()) * self.dtype_bytes

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token of context holds, over all layers (K and V)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelShape":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"ModelShape: unknown field(s) {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_config(cls, config: Any, name: str | None = None) -> "ModelShape":
        check_config(config)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            name=name or getattr(config, "name_or_path", "") or config.model_type,
            family=config.model_type,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vocab_size=config.vocab_size,
            qkv_bias=config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False)),
        )


def _unsupported_message(what: str) -> str:
    names = ", ".join(cls for _, cls in SUPPORTED_FAMILIES.values())
    return (f"pipedecode supports Llama-family causal LMs ({names}); got {what!r}. "
            f"Presets: {', '.join(PRESETS)}")


def check_config(config: Any) -> None:
    """Raise UnsupportedModelError unless `config` is a supported Llama-family config."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(_unsupported_message(model_type or type(config).__name__))
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) \
            and model_type == "mistral":
        raise UnsupportedModelError(
            "Mistral with a sliding window is not supported yet; set sliding_window=None")


def check_model(model: Any) -> None:
    """Raise UnsupportedModelError unless `model` is a supported causal LM module."""
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise UnsupportedModelError(_unsupported_message(type(model).__name__))
    check_config(model.config)
    expected = SUPPORTED_FAMILIES[model.config.model_type][1]
    if type(model).__name__ != expected:
        raise UnsupportedModelError(
            f"pipedecode needs a decoder with its LM head ({expected}); got "
            f"{type(model).__name__}. Load it with AutoModelForCausalLM.")
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    if attn not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"attention implementation {attn!r} is not supported; load the model with "
            f"attn_implementation='sdpa' or 'eager'")


def make_config(spec: str | Any, **overrides: Any) -> Any:
    """A transformers config from a preset name, a local directory, a hub id, or a config."""
    import transformers

    if not isinstance(spec, str):
        config = spec
    elif spec in PRESETS:
        fields = {**PRESETS[spec], **overrides}
        model_type = fields.pop("model_type")
        config = getattr(transformers, SUPPORTED_FAMILIES[model_type][0])(**fields)
        config.name_or_path = spec
        overrides = {}
    else:
        if not os.path.isdir(spec) and "/" not in spec:
            raise UnsupportedModelError(_unsupported_message(spec))
        try:
            config = transformers.AutoConfig.from_pretrained(spec)
        except (OSError, ValueError) as exc:
            raise UnsupportedModelError(
                f"could not load a config from {spec!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Use a local directory with "
                f"config.json, a reachable hub id, or a preset: {', '.join(PRESETS)}") from None
    for key, value in overrides.items():
        setattr(config, key, value)
    check_config(config)
    return config


def _preset_shape(name: str) -> ModelShape:
    """A preset's shape straight from the table (importing transformers takes seconds)."""
    fields = PRESETS[name]
    heads = fields["num_attention_heads"]
    return ModelShape(
        name=name, family=fields["model_type"], hidden_size=fields["hidden_size"],
        intermediate_size=fields["intermediate_size"], num_layers=fields["num_hidden_layers"],
        num_heads=heads, num_kv_heads=fields.get("num_key_value_heads") or heads,
        head_dim=fields.get("head_dim") or fields["hidden_size"] // heads,
        vocab_size=fields["vocab_size"], qkv_bias=fields["model_type"] == "qwen2")


def model_shape(spec: str | Any) -> ModelShape:
    """The ModelShape of a ModelShape, preset name, path, hub id, config or model."""
    if isinstance(spec, ModelShape):
        return spec
    if isinstance(spec, str) and spec in PRESETS:
        return _preset_shape(spec)
    if isinstance(spec, torch.nn.Module):
        check_model(spec)
        return ModelShape.from_config(spec.config)
    name = spec if isinstance(spec, str) else None
    return ModelShape.from_config(make_config(spec), name=name)


def build_model(spec: str | Any = DEFAULT_PRESET, *, dtype: torch.dtype = torch.float32,
                seed: int = 0, attn_implementation: str = "sdpa", **overrides: Any):
    """A causal LM with random weights (fixed seed) from a preset, path, hub id or config."""
    import transformers

    config = make_config(spec, **overrides)
    if attn_implementation not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"attention implementation {attn_implementation!r} is not supported; "
            f"use one of {SUPPORTED_ATTENTION}")
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    cls = getattr(transformers, SUPPORTED_FAMILIES[config.model_type][1])
    model = cls(config).to(dtype).eval()
    return model


def load_model(spec: str, *, dtype: torch.dtype = torch.bfloat16,
               attn_implementation: str = "sdpa"):
    """Pretrained weights from a local directory or hub id (presets build random weights)."""
    import transformers

    if spec in PRESETS:
        return build_model(spec, dtype=dtype, attn_implementation=attn_implementation)
    config = make_config(spec)
    cls = getattr(transformers, SUPPORTED_FAMILIES[config.model_type][1])
    try:
        model = cls.from_pretrained(spec, dtype=dtype, attn_implementation=attn_implementation)
    except OSError as exc:
        raise UnsupportedModelError(f"could not load weights from {spec!r}: {exc}") from None
    return model.eval()
