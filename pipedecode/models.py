"""Llama-family models: their shapes, named presets, and how to build or load them.

Owns `ModelShape` (the frozen numbers every other part of pipedecode plans with), the
preset table (tiny configs for tests, real shapes for planning without weights), the check
that a model is a family pipedecode supports, and the check that its weights fit the memory
free on the device it is built on (the one thing it knows of devices). Knows nothing of graphs
or schedules.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass
from typing import Any

import torch

from pipedecode.errors import InsufficientMemoryError, UnsupportedModelError, WorkloadError

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

    def weight_bytes(self) -> int:
        """Decoder linears, embedding and LM head (counted untied); norms and biases, under
        0.1% of a real model, are left out."""
        return self.num_layers * self.weight_bytes_per_layer() \
            + 2 * self.vocab_size * self.hidden_size * self.dtype_bytes

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
        try:
            config = getattr(transformers, SUPPORTED_FAMILIES[model_type][0])(**fields)
        except Exception as exc:   # noqa: BLE001 - transformers' validators raise several kinds
            raise UnsupportedModelError(f"preset {spec!r} with {overrides}: "
                                        f"{_cause(exc)}") from None
        config.name_or_path = spec
        overrides = {}
    else:
        if not os.path.isdir(spec) and "/" not in spec:
            raise UnsupportedModelError(_unsupported_message(spec))
        try:
            config = transformers.AutoConfig.from_pretrained(spec)
        except Exception as exc:   # noqa: BLE001 - OSError, ValueError, hub validation errors
            raise UnsupportedModelError(
                f"could not load a config from {spec!r} ({_cause(exc)}). Use a local directory "
                f"with a valid config.json, a reachable hub id, or a preset: "
                f"{', '.join(PRESETS)}") from None
    for key, value in overrides.items():
        setattr(config, key, value)
    check_config(config)
    return config


def _cause(exc: BaseException) -> str:
    """The innermost cause of an exception as one line: 'ValueError: the hidden size ...'.

    transformers' config validators wrap the real reason (a ValueError) in a multi-line error."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


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


def max_positions(spec: str | Any) -> int | None:
    """Positions (prompt + generated tokens) a preset, path, hub id, config or model covers;
    None where unknown (a bare ModelShape)."""
    if isinstance(spec, ModelShape):
        return None
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec].get("max_position_embeddings")
    config = spec.config if isinstance(spec, torch.nn.Module) else make_config(spec)
    return getattr(config, "max_position_embeddings", None)


def check_positions(spec: str | Any, tokens: int, what: str = "context",
                    limit: int | None = None) -> None:
    """WorkloadError when `tokens` positions exceed the model's (`limit`, else looked up)."""
    limit = max_positions(spec) if limit is None else limit
    if limit is not None and tokens > limit:
        name = spec if isinstance(spec, str) else \
            getattr(spec, "name", "") or getattr(spec, "name_or_path", "") or "the model"
        raise WorkloadError(f"{what} needs {tokens} positions, beyond the {limit} of {name} "
                            f"(max_position_embeddings); use at most {limit} positions")


def free_memory_bytes(device: str | torch.device = "cpu") -> tuple[int, str]:
    """(bytes free on `device` now, what the number is): CUDA's free memory, or the RAM the
    kernel says can be had without swapping (MemAvailable), else the free pages."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {torch.cuda.get_device_name(device)}"
    if device.type == "meta":
        return 1 << 62, "meta: nothing is allocated"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM (MemAvailable)"
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free RAM"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def gib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 30:.1f} GiB"


def check_memory(needed_bytes: int, device: str | torch.device, needs: str, advice: str) -> int:
    """Raise InsufficientMemoryError unless `needed_bytes` fit what `device` has free; returns
    the free bytes. `needs` says what the bytes are for, `advice` what to do instead."""
    free, what = free_memory_bytes(device)
    if needed_bytes > free:
        raise InsufficientMemoryError(f"{needs}: {gib(needed_bytes)} needed on {device}, but "
                                      f"only {gib(free)} is {what}; {advice}")
    return free


def weights_present(path: str) -> bool:
    """Whether a local model directory holds weight files (safetensors or PyTorch bins)."""
    patterns = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
    return os.path.isdir(path) and any(glob.glob(os.path.join(path, p)) for p in patterns)


def _check_weights_fit(config: Any, name: str, dtype: torch.dtype, device) -> None:
    shape = dataclasses.replace(ModelShape.from_config(config, name=name),
                                dtype_bytes=dtype.itemsize)
    check_memory(shape.weight_bytes(), device, f"{name}'s {dtype_name(dtype)} weights",
                 "use a smaller model, a smaller dtype or a device with more memory")


def build_model(spec: str | Any = DEFAULT_PRESET, *, dtype: torch.dtype = torch.float32,
                seed: int = 0, attn_implementation: str = "sdpa",
                device: str | torch.device | None = None, **overrides: Any):
    """A causal LM with random weights (fixed seed) from a preset, path, hub id or config.

    Built in `dtype` directly on `device` (default CPU), so no larger copy is made first, and
    only after checking that the weights fit the memory free there (InsufficientMemoryError
    otherwise). The seed gives the same weights at every dtype (rounded) on one device."""
    import transformers

    config = make_config(spec, **overrides)
    if attn_implementation not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"attention implementation {attn_implementation!r} is not supported; "
            f"use one of {SUPPORTED_ATTENTION}")
    device = torch.device(device or "cpu")
    name = spec if isinstance(spec, str) else getattr(config, "name_or_path", "") or "model"
    _check_weights_fit(config, name, dtype, device)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    cls = getattr(transformers, SUPPORTED_FAMILIES[config.model_type][1])
    with device:
        model = cls._from_config(config, dtype=dtype)
    return model.eval()


def load_model(spec: str, *, dtype: torch.dtype = torch.bfloat16,
               attn_implementation: str = "sdpa", device: str | torch.device | None = None):
    """Pretrained weights from a local directory or hub id, loaded onto `device` (default CPU)
    after checking that they fit there. Presets have no weights: they build random ones."""
    import transformers

    if spec in PRESETS:
        return build_model(spec, dtype=dtype, attn_implementation=attn_implementation,
                           device=device)
    if os.path.isdir(spec) and not weights_present(spec):
        raise UnsupportedModelError(
            f"{spec!r} holds no weights (*.safetensors or pytorch_model*.bin); build random "
            f"weights of its shape with build_model({spec!r}) instead")
    config = make_config(spec)
    device = torch.device(device or "cpu")
    # transformers loads into RAM first (a device_map would need accelerate), then it moves
    for where in {torch.device("cpu"), device}:
        _check_weights_fit(config, spec, dtype, where)
    cls = getattr(transformers, SUPPORTED_FAMILIES[config.model_type][1])
    try:
        model = cls.from_pretrained(spec, dtype=dtype, attn_implementation=attn_implementation)
    except OSError as exc:
        raise UnsupportedModelError(f"could not load weights from {spec!r}: "
                                    f"{_cause(exc)}") from None
    return model.to(device).eval()
