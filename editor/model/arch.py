"""The architecture table: where each model family keeps its heads, neurons and norms.

All per-family knowledge lives in ``ARCHITECTURES``, keyed by ``config.model_type``. Adding a family
is one ``ArchSpec`` entry; nothing else in the package branches on the family. Paths are checked
against the transformers modeling files (and against the TransformerLens converters).

Two facts hold for every family and are therefore not table fields:

* a head is the slice ``h*head_dim:(h+1)*head_dim`` of the INPUT of the attention output
  projection (grouped-query attention does not change this);
* a neuron is input feature ``k`` of the MLP output projection; its coefficient is that input.

Head counts and ``head_dim`` come from ``config`` (never from modules, which transformers moved);
projection orientation is decided by type (``Conv1D`` stores ``[in, out]``), never by shape.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from typing import TYPE_CHECKING

from editor.errors import UserError

if TYPE_CHECKING:  # torch and transformers load on first use: the table serves config-only checks too
    import torch
    from torch import nn


# The same sizes under the names some families' config.json files use (transformers maps them).
_CONFIG_ALIASES = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "hidden_size": "n_embd"}


def config_dimensions(config) -> tuple[int, int, int] | None:
    """(layers, heads, FFN width) from a config alone (a shrunk model's config carries its own
    width), or None for a family outside the table: what a plan's components are checked against
    before any weights load. ``config`` is a transformers config or a config.json mapping."""
    def get(key: str):
        if isinstance(config, dict):
            value = config.get(key)
            return config.get(_CONFIG_ALIASES[key]) if value is None and key in _CONFIG_ALIASES else value
        return getattr(config, key, None)

    spec = ARCHITECTURES.get(get("model_type"))
    if spec is None:
        return None
    layers, heads, hidden = get("num_hidden_layers"), get("num_attention_heads"), get("hidden_size")
    if not all(isinstance(v, int) for v in (layers, heads, hidden)):
        return None  # not a config this table reads: the load will say what is wrong
    width = get(spec.ffn_width_attr) or 4 * hidden  # GPT-2's n_inner=None
    return layers, heads, int(width)


@dataclass(frozen=True)
class ArchSpec:
    """Module paths and behaviour of one family. Layer-relative paths start below ``layers.N``."""

    layers: str  # the ModuleList of decoder layers
    embed: str  # token embedding
    final_norm: str  # norm before the unembedding
    unembed: str  # output head (W_U)
    attn: str  # attention module; returns (output, probabilities)
    attn_out: str  # attention output projection; its input holds the heads side by side
    mlp_in: tuple[str, ...]  # projections reading the MLP input: (gate, up) if gated, else (fc_in,)
    mlp_out: str  # MLP output projection; its input holds the neuron coefficients
    attn_norm: str  # norm in front of attention
    attn_v: str | None  # value projection (a separate Linear); None where Q, K, V are fused
    mlp_norm: str | None  # norm whose INPUT is the MLP's residual stream; None: the MLP reads ln(layer input)
    norm: str  # "layernorm", "rms", or "rms_plus_one" (Gemma multiplies by 1 + weight)
    attn_qkv: tuple[str, str, str]  # query, key, value projections (the same fused module three times)
    # How a fused QKV output lays out its features: "concatenated" (GPT-2: all queries, then all keys,
    # then all values) or "per_head" (GPT-NeoX: each head's query, key and value side by side).
    qkv_fused: str | None = None
    gated: bool = False  # coefficient = act(gate) * up
    act_attrs: tuple[str, ...] = ("hidden_act",)  # config attribute naming the MLP activation
    attn_post_norm: str | None = None  # norm on the attention output before the residual add (Gemma 2/3)
    mlp_post_norm: str | None = None  # norm on the MLP output before the residual add (Gemma 2/3)
    parallel_residual: bool | str = False  # attention and MLP both read the layer input; str: config flag
    logit_softcap_attr: str | None = None  # config attribute of the tanh soft-cap on final logits
    ffn_width_attr: str = "intermediate_size"  # config attribute holding the FFN width (for physical shrink)
    # Heads can be removed physically only where the config fixes head_dim on its own (head_dim =
    # hidden/heads elsewhere, so fewer heads would change the head size) and Q, K, V are separate.
    heads_shrinkable: bool = False
    # GGUF export: llama.cpp's architecture name (None: not exported) and whether its converter
    # permutes the query/key rows into its rotary layout (the Llama family does, Qwen2 does not).
    gguf: str | None = None
    gguf_permute_qk: bool = False
    # Whether llama.cpp's loader for that architecture accepts heads x head_dim != hidden size (a
    # model with heads removed); its qwen2 loader fixes the query projection at hidden x hidden.
    gguf_fewer_heads: bool = False
    # Config attributes llama.cpp does not read but assumes equal to head_dim (Gemma 2's attention
    # scale): a model where they differ is refused rather than exported wrong.
    gguf_assumes_head_dim: tuple[str, ...] = ()
    # The per-layer attention pattern llama.cpp hard-codes for the architecture (repeated from layer
    # 0); a model whose config.layer_types differs (a shrunk Gemma 2 that lost a layer) is refused.
    gguf_layer_pattern: tuple[str, ...] = ()
    # Config flag that gives every MLP projection a bias (Llama's ``mlp_bias``): an affine edit of the
    # MLP output (LEACE's eraser) folds its constant into the output projection's bias through it.
    mlp_bias_attr: str | None = None


_GPT2 = ArchSpec(
    layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f", unembed="lm_head",
    attn="attn", attn_out="attn.c_proj", mlp_in=("mlp.c_fc",), mlp_out="mlp.c_proj",
    attn_norm="ln_1", attn_v=None, mlp_norm="ln_2", norm="layernorm", act_attrs=("activation_function",),
    attn_qkv=("attn.c_attn",) * 3, qkv_fused="concatenated", ffn_width_attr="n_inner",
)
_GPTJ = ArchSpec(
    layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f", unembed="lm_head",
    attn="attn", attn_out="attn.out_proj", mlp_in=("mlp.fc_in",), mlp_out="mlp.fc_out",
    attn_norm="ln_1", attn_v="attn.v_proj", mlp_norm=None, norm="layernorm", act_attrs=("activation_function",),
    parallel_residual=True, attn_qkv=("attn.q_proj", "attn.k_proj", "attn.v_proj"), ffn_width_attr="n_inner",
)
_GPT_NEOX = ArchSpec(
    layers="gpt_neox.layers", embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm",
    unembed="lm_head", attn="attention", attn_out="attention.dense", mlp_in=("mlp.dense_h_to_4h",),
    mlp_out="mlp.dense_4h_to_h", attn_norm="input_layernorm", attn_v=None,
    # In both residual modes the input of post_attention_layernorm is what the MLP reads.
    mlp_norm="post_attention_layernorm", norm="layernorm", parallel_residual="use_parallel_residual",
    attn_qkv=("attention.query_key_value",) * 3, qkv_fused="per_head",
)
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_LLAMA = ArchSpec(
    layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head",
    attn="self_attn", attn_out="self_attn.o_proj", mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj", attn_norm="input_layernorm", attn_v="self_attn.v_proj", attn_qkv=_QKV,
    mlp_norm="post_attention_layernorm",
    norm="rms", gated=True, heads_shrinkable=True,
)
_GEMMA = ArchSpec(
    layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head",
    attn="self_attn", attn_out="self_attn.o_proj", mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj", attn_norm="input_layernorm", attn_v="self_attn.v_proj", attn_qkv=_QKV,
    mlp_norm="post_attention_layernorm",
    norm="rms_plus_one", gated=True, act_attrs=("hidden_activation", "hidden_act"),
    heads_shrinkable=True,
)
# Gemma 2/3: "post_attention_layernorm" normalises the attention OUTPUT; the MLP's pre-norm is
# "pre_feedforward_layernorm". A head's or neuron's contribution passes through the post norm.
_GEMMA2 = ArchSpec(
    layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head",
    attn="self_attn", attn_out="self_attn.o_proj", mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj", attn_norm="input_layernorm", attn_v="self_attn.v_proj", attn_qkv=_QKV,
    mlp_norm="pre_feedforward_layernorm",
    norm="rms_plus_one", gated=True, act_attrs=("hidden_activation", "hidden_act"),
    attn_post_norm="post_attention_layernorm", mlp_post_norm="post_feedforward_layernorm",
    logit_softcap_attr="final_logit_softcapping", heads_shrinkable=True,
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": _GPT2,
    "gptj": _GPTJ,
    "gpt_neox": _GPT_NEOX,
    "llama": replace(_LLAMA, gguf="llama", gguf_permute_qk=True, gguf_fewer_heads=True, mlp_bias_attr="mlp_bias"),
    "mistral": replace(_LLAMA, gguf="llama", gguf_permute_qk=True, gguf_fewer_heads=True),
    "qwen2": replace(_LLAMA, gguf="qwen2"),
    "qwen3": replace(_LLAMA, gguf="qwen3", gguf_fewer_heads=True),  # q_norm/k_norm act inside attention
    "gemma": replace(_GEMMA, gguf="gemma", gguf_fewer_heads=True),
    "gemma2": replace(_GEMMA2, gguf="gemma2", gguf_fewer_heads=True,
                      gguf_assumes_head_dim=("query_pre_attn_scalar",),
                      gguf_layer_pattern=("sliding_attention", "full_attention")),
    # llama.cpp's gemma3: 5 sliding-window layers then 1 full one, from layer 0; local rope base 10000.
    "gemma3_text": replace(_GEMMA2, gguf="gemma3", gguf_fewer_heads=True,
                           gguf_assumes_head_dim=("query_pre_attn_scalar",),
                           gguf_layer_pattern=("sliding_attention",) * 5 + ("full_attention",)),
}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain transformers model under a peft wrapper (``base_model.model.``), or ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def input_dim(proj: nn.Module) -> int:
    """Weight dimension that indexes input features: ``Conv1D`` stores ``[in, out]``, Linear ``[out, in]``.

    Decided by type, never by shape (GPT-2's ``attn.c_proj`` is square).
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    if isinstance(proj, Conv1D):
        return 0
    if isinstance(proj, nn.Linear):
        return 1
    raise UserError(
        f"cannot address a {type(proj).__name__} projection by input feature; only nn.Linear and "
        "transformers Conv1D are supported (merge LoRA adapters or de-quantise the model first)"
    )


def weight_in_slice(proj: nn.Module, cols: slice | int) -> torch.Tensor:
    """View of ``proj``'s weight for input features ``cols``, shaped ``[n_in, out]`` for every type."""
    if isinstance(cols, int):
        cols = slice(cols, cols + 1)
    from editor.model import offload

    weight = offload.read(proj)  # offloaded weights read from their store (editor/model/offload.py)
    return weight[cols, :] if input_dim(proj) == 0 else weight[:, cols].T


def weight_out_rows(proj: nn.Module) -> torch.Tensor:
    """``proj``'s weight as ``[out, in]`` for every type: row k is what output feature k reads."""
    from editor.model import offload

    weight = offload.read(proj)
    return weight.T if input_dim(proj) == 0 else weight


def in_features(proj: nn.Module) -> int:
    """Number of input features of a projection (orientation by type)."""
    return weight_in_slice(proj, slice(None)).shape[0]


class Arch:
    """An ``ArchSpec`` bound to one model, with sizes read from its config."""

    def __init__(self, model: nn.Module):
        self.model = unwrap(model)
        self.config = self.model.config
        model_type = getattr(self.config, "model_type", None)
        if model_type not in ARCHITECTURES:
            raise UserError(
                f"model family {model_type!r} is not in the architecture table; supported: "
                f"{', '.join(sorted(ARCHITECTURES))}. Add one ArchSpec entry to ARCHITECTURES in "
                "editor/model/arch.py"
            )
        self.model_type: str = model_type
        self.spec: ArchSpec = ARCHITECTURES[model_type]
        c = self.config
        self.layers: nn.ModuleList = self.model.get_submodule(self.spec.layers)
        self.n_layers: int = len(self.layers)
        self.d_model: int = c.hidden_size
        self.n_heads: int = c.num_attention_heads
        self.n_kv_heads: int = getattr(c, "num_key_value_heads", None) or self.n_heads
        self.head_dim: int = getattr(c, "head_dim", None) or self.d_model // self.n_heads
        self.vocab_size: int = c.vocab_size

    # Modules ---------------------------------------------------------------------------------
    def layer_module(self, layer: int, path: str) -> nn.Module:
        self.check_layer(layer)
        return self.layers[layer].get_submodule(path)

    def attn_out(self, layer: int) -> nn.Module:
        return self.layer_module(layer, self.spec.attn_out)

    def mlp_out(self, layer: int) -> nn.Module:
        return self.layer_module(layer, self.spec.mlp_out)

    def attn(self, layer: int) -> nn.Module:
        return self.layer_module(layer, self.spec.attn)

    def mlp_in(self, layer: int) -> list[nn.Module]:
        return [self.layer_module(layer, path) for path in self.spec.mlp_in]

    def mlp_input_norm(self, layer: int) -> nn.Module:
        """The norm whose output the MLP reads (the attention norm for GPT-J's shared ln_1)."""
        return self.layer_module(layer, self.spec.mlp_norm or self.spec.attn_norm)

    def mlp_norm(self, layer: int) -> nn.Module | None:
        return None if self.spec.mlp_norm is None else self.layer_module(layer, self.spec.mlp_norm)

    PROJECTION_ROLES = ("q", "k", "v", "o", "mlp_in", "mlp_out")

    def projection_names(self, layer: int, roles) -> list[str]:
        """Full module names of ``layer``'s projections by role (q, k, v, o, mlp_in, mlp_out); a fused
        QKV module is named once. For peft's ``target_modules``."""
        self.check_layer(layer)
        paths = {"q": [self.spec.attn_qkv[0]], "k": [self.spec.attn_qkv[1]], "v": [self.spec.attn_qkv[2]],
                 "o": [self.spec.attn_out], "mlp_in": list(self.spec.mlp_in), "mlp_out": [self.spec.mlp_out]}
        out = []
        for role in roles:
            if role not in paths:
                raise UserError(f"unknown projection {role!r}; choose from {', '.join(self.PROJECTION_ROLES)}")
            out.extend(f"{self.spec.layers}.{layer}.{p}" for p in paths[role])
        return list(dict.fromkeys(out))

    @property
    def final_norm(self) -> nn.Module:
        return self.model.get_submodule(self.spec.final_norm)

    @property
    def unembed(self) -> nn.Module:
        return self.model.get_submodule(self.spec.unembed)

    # Sizes and components ----------------------------------------------------------------------
    def d_ffn(self, layer: int = 0) -> int:
        """FFN width (input features of the MLP output projection)."""
        return in_features(self.mlp_out(layer))

    def head_slice(self, head: int) -> slice:
        """Columns of the attention output projection's input that belong to ``head``."""
        if not 0 <= head < self.n_heads:
            raise UserError(f"head {head} out of range: the model has {self.n_heads} heads per layer")
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    def qk_features(self, role: str, index: int) -> list[int]:
        """Output features of the query (``role="q"``, ``index`` a query head) or key (``"k"``, ``index``
        a key/value head) projection that belong to that head, in the module :attr:`ArchSpec.attn_qkv`
        names (fused or not): what a query or key patch replaces."""
        d, count = self.head_dim, self.n_heads if role == "q" else self.n_kv_heads
        if role not in ("q", "k"):
            raise ValueError(f"role must be q or k, got {role!r}")
        if not 0 <= index < count:
            what = "head" if role == "q" else "key/value group"
            raise UserError(f"{what} {index} out of range: the model has {count} per layer")
        start = {None: index * d,  # a projection of its own: heads side by side
                 "concatenated": (0 if role == "q" else self.n_heads * d) + index * d,
                 "per_head": 3 * d * index + (0 if role == "q" else d)}[self.spec.qkv_fused]
        return list(range(start, start + d))

    @property
    def heads_per_group(self) -> int:
        """Query heads that read one key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def group_heads(self, group: int) -> list[int]:
        """Query heads sharing key/value head ``group``: transformers' ``repeat_kv`` gives query head
        ``h`` the key/value head ``h // heads_per_group``."""
        if not 0 <= group < self.n_kv_heads:
            raise UserError(f"key/value group {group} out of range: the model has {self.n_kv_heads} per layer")
        rep = self.heads_per_group
        return list(range(group * rep, (group + 1) * rep))

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise UserError(f"layer {layer} out of range: the model has {self.n_layers} layers (0-{self.n_layers - 1})")

    @property
    def parallel_residual(self) -> bool:
        flag = self.spec.parallel_residual
        return bool(getattr(self.config, flag, False)) if isinstance(flag, str) else flag

    @property
    def activation(self) -> str | None:
        for attr in self.spec.act_attrs:
            value = getattr(self.config, attr, None)
            if value:
                return str(value)
        return None

    @property
    def logit_softcap(self) -> float | None:
        attr = self.spec.logit_softcap_attr
        return getattr(self.config, attr, None) if attr else None

    def describe(self) -> dict:
        """Sizes a user asks for (``lmedit models info``)."""
        return {
            "family": self.model_type,
            "layers": self.n_layers,
            "heads": self.n_heads,
            "kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "d_model": self.d_model,
            "ffn": self.d_ffn(0),
            "vocab": self.vocab_size,
            "activation": self.activation,
            "gated_mlp": self.spec.gated,
            "norm": self.spec.norm,
            "parallel_residual": self.parallel_residual,
        }
