"""PPlug: a user embedding from the whole history, prepended to a frozen LM as two soft tokens.

Liu et al., "LLMs + Persona-Plug = Personalized LLMs" (ACL 2025). Each history item h_i is embedded
once by a frozen encoder (:mod:`lamp_fid.data.history`); a trained copy of that encoder embeds the
query x (with BGE's query instruction in front), and::

    w_i = softmax_i(x · h_i)        over the user's items (padding masked, no temperature)
    P   = Σ_i w_i · Proj(h_i)       Proj = Linear(d_enc → d_model) → GELU → Linear(d_model → d_model)
    I'  = Proj_I(I)                 I: one trainable d_enc vector (uniform init); Proj_I: Proj's shape

The LM reads ``[I'; P; Emb(x)]`` through ``inputs_embeds`` (:func:`prepend_soft_tokens`); no token is
added to its vocabulary. Trained: I, Proj_I, Proj and the query encoder; the LM stays frozen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from lamp_fid.errors import LaMPError
from lamp_fid.retrieval.dense import mean_pool

Pooling = Literal["cls", "mean"]
POOLINGS: tuple[str, ...] = ("cls", "mean")
BGE_INSTRUCTION = "Represent this sentence for searching relevant passages: "
N_SOFT = 2  # [I'; P]


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is ``cls`` or ``mean``, else a one-line LaMPError."""
    if pooling not in POOLINGS:
        raise LaMPError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
    return pooling


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """L2-normalised sentence embeddings ``[B, d]`` of ``hidden`` ``[B, L, d]``: the first token's
    state (``cls``, BGE) or the mean over the non-padding tokens (``mean``, sentence-transformers)."""
    vec = hidden[:, 0] if pooling == "cls" else mean_pool(hidden, mask)
    return F.normalize(vec, dim=-1)


def check_tokenizer(tokenizer, name: str):
    """``tokenizer`` if it has a vocabulary beyond its special tokens, else a one-line LaMPError.

    transformers 5 builds an *empty* tokenizer (special tokens only, every word ``[UNK]``) from a
    folder that has a model config but no tokenizer files: every query would silently read the same.
    """
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise LaMPError(f"user encoder {name!r} has no tokenizer (no vocabulary beyond its special tokens): "
                        "save the encoder's tokenizer in its folder")
    return tokenizer


def load_tokenizer(name: str):
    """The user encoder's tokenizer (checked by :func:`check_tokenizer`), or a one-line LaMPError."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LaMPError(f"cannot load user encoder {name!r}: {first}") from None
    return check_tokenizer(tokenizer, name)


def load_encoder(name: str) -> tuple[nn.Module, object]:
    """An HF encoder (float32) and its tokenizer from a hub name or a local folder."""
    from transformers import AutoModel

    tokenizer = load_tokenizer(name)
    try:
        model = AutoModel.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LaMPError(f"cannot load user encoder {name!r}: {first}") from None
    return model, tokenizer


def mlp(d_in: int, d_out: int) -> nn.Sequential:
    """Linear(d_in → d_out) → GELU → Linear(d_out → d_out): PPlug's Proj and Proj_I."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


class PersonaPlug(nn.Module):
    """The PPlug user embedder: query encoder, input-aware aggregation of history vectors, two soft tokens.

    Soft-token scale: each soft token is rescaled to a fixed length, the mean L2 norm of the LM's
    input-embedding rows, measured once here and kept as the buffer ``soft_norm`` (saved with the
    weights). Only the tokens' directions are learned. Why fixed and measured rather than a learned
    scalar: the frozen LM only ever saw inputs of its own embeddings' scale, and the MLPs' output norm
    at init is arbitrary (it depends on d_model and the init); a learned scalar initialised to that
    norm (~10-500 for T5s) would move by about the learning rate (1e-4) per AdamW step, i.e. it would
    stay where it started anyway, at the cost of one more hyperparameter. The released code instead
    multiplies by constants tuned to FlanT5-XXL (not reproduced). With ``freeze_lm`` off the LM's
    embeddings may drift; the buffer keeps the construction-time value.

    A user with no history items (all of ``hist_mask`` false) gets ``P = Proj(0)``: the projection of
    an empty (zero) history vector, a learned "no history" token of the same length as any other,
    and never NaN (the released code's all-padding row would give a softmax over nothing).
    """

    def __init__(self, encoder: str | nn.Module, lm_input_embeddings: nn.Embedding, *,
                 pooling: Pooling = "cls", instruction: str = BGE_INSTRUCTION, tokenizer=None):
        """
        Args:
            encoder: the query encoder Enc_input (trained): an HF name or local folder (the same model as
                the frozen history encoder), or an already built HF encoder module.
            lm_input_embeddings: the LM's input embeddings (``lm.get_input_embeddings()``): their width
                is d_model and their mean row norm sets the soft tokens' length. Not kept.
            pooling: cls (BGE: the first token's last hidden state) or mean (sentence-transformers).
            instruction: text put before every query (BGE's query instruction; "" for none).
            tokenizer: the encoder's tokenizer when ``encoder`` is a module (loaded with it otherwise).
        """
        super().__init__()
        self.pooling = check_pooling(pooling)
        self.instruction_text = instruction
        if isinstance(encoder, str):
            encoder, tokenizer = load_encoder(encoder)
        if isinstance(getattr(encoder, "pooler", None), nn.Module):
            # BERT-style pooler head: unused by cls/mean pooling of the last hidden states, and an
            # unused trainable parameter breaks DDP (no gradient ever reaches it).
            encoder.pooler = None
        self.encoder = encoder
        self.tokenizer = tokenizer
        d_enc = encoder.config.hidden_size
        d_model = lm_input_embeddings.embedding_dim
        self.instruction = nn.Parameter(torch.rand(d_enc))  # I: uniform on [0, 1), as released
        self.proj_instruction = mlp(d_enc, d_model)  # Proj_I
        self.proj = mlp(d_enc, d_model)  # Proj
        with torch.no_grad():
            norm = lm_input_embeddings.weight.float().norm(dim=-1).mean()
        self.register_buffer("soft_norm", norm.clone())

    # --- pieces -------------------------------------------------------------------------------
    def query_inputs(self, queries: list[str], max_length: int = 512) -> dict[str, torch.Tensor]:
        """Tokenized ``instruction + query`` for each query (padded, truncated to ``max_length``)."""
        if self.tokenizer is None:
            raise LaMPError("PersonaPlug was built from an encoder module without its tokenizer")
        texts = [self.instruction_text + q for q in queries]
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                                   return_tensors="pt"))

    def embed_query(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """x: L2-normalised query embeddings ``[B, d_enc]`` from the trained encoder."""
        hidden = self.encoder(input_ids=query_ids, attention_mask=query_mask).last_hidden_state
        return pool(hidden, query_mask, self.pooling)

    @staticmethod
    def weights(x: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
        """w ``[B, N]`` = softmax over each user's items of ``x · h_i``; 0 on padding; all 0 for a user
        without items."""
        mask = hist_mask.bool()
        scores = torch.einsum("bd,bnd->bn", x, hist).masked_fill(~mask, float("-inf"))
        empty = ~mask.any(-1, keepdim=True)  # [B, 1]
        scores = scores.masked_fill(empty, 0.0)  # a row of -inf would softmax to NaN
        return torch.softmax(scores, dim=-1).masked_fill(~mask, 0.0)

    def persona(self, x: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
        """P ``[B, d_model]`` = Σ_i w_i · Proj(h_i); ``Proj(0)`` for a user without items."""
        mask = hist_mask.bool()
        hist = hist.to(x.dtype).masked_fill(~mask[..., None], 0.0)  # padding rows may hold anything
        w = self.weights(x, hist, mask)
        projected = self.proj(hist[mask])  # only real items: [n_real, d_model]
        per_item = projected.new_zeros(*mask.shape, projected.shape[-1])
        per_item[mask] = projected  # [B, N, d_model], zero on padding
        P = torch.einsum("bn,bnd->bd", w.to(per_item.dtype), per_item)
        empty = ~mask.any(-1, keepdim=True)
        return torch.where(empty, self.proj(hist.new_zeros(hist.shape[-1])).to(P.dtype), P)

    def rescale(self, soft: torch.Tensor) -> torch.Tensor:
        """Each soft vector rescaled to length ``soft_norm`` (the LM's mean input-embedding norm)."""
        return soft * (self.soft_norm / soft.norm(dim=-1, keepdim=True).clamp_min(1e-6)).to(soft.dtype)

    # --- the user embedder --------------------------------------------------------------------
    def forward(self, query_ids: torch.Tensor, query_mask: torch.Tensor, hist: torch.Tensor,
                hist_mask: torch.Tensor) -> torch.Tensor:
        """Soft tokens ``[B, 2, d_model]`` = ``[I'; P]`` for queries ``[B, Lq]`` and frozen history
        embeddings ``hist`` ``[B, N, d_enc]`` (``hist_mask`` ``[B, N]``: 1 for a real item)."""
        x = self.embed_query(query_ids, query_mask)  # [B, d_enc]
        P = self.persona(x, hist, hist_mask)  # [B, d_model]
        instruction = self.proj_instruction(self.instruction.to(x.dtype))  # [d_model]
        soft = torch.stack([instruction.to(P.dtype).expand_as(P), P], dim=1)  # [B, 2, d_model]
        return self.rescale(soft)


def prepend_soft_tokens(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        soft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[Emb(x)]`` -> ``[soft; Emb(x)]``: the LM's ``inputs_embeds`` ``[N, S+L, d]`` and mask ``[N, S+L]``.

    ``input_ids`` is ``[N, L]``: one input per example, or FiD's ``[B, k, L]`` passages reshaped to
    ``[B*k, L]`` (example-major, as :meth:`FiDModule.fuse` does). ``soft`` is ``[N, S, d]``, or
    ``[B, S, d]`` with ``N = B*k``, then repeated for each of an example's k passages. The soft
    positions get mask 1, except on an all-padding passage (a user with fewer than k items), which
    stays fully masked so that the decoder never attends to it.
    """
    embeds = lm.get_input_embeddings()(input_ids)  # [N, L, d]
    N, B = input_ids.shape[0], soft.shape[0]
    if B != N:
        if B == 0 or N % B:
            raise LaMPError(f"soft tokens for {B} examples do not divide {N} inputs")
        soft = soft.repeat_interleave(N // B, dim=0)  # [B, S, d] -> [B*k, S, d]
    soft_mask = attention_mask.any(-1, keepdim=True).to(attention_mask.dtype).expand(-1, soft.shape[1])
    return (torch.cat([soft.to(embeds.dtype), embeds], dim=1),  # [N, S+L, d]
            torch.cat([soft_mask, attention_mask], dim=1))  # [N, S+L]


# --- export outside Lightning -------------------------------------------------------------------

EXPORT_WEIGHTS = "persona_plug.safetensors"  #: I, Proj_I, Proj and soft_norm (safetensors)
EXPORT_ENCODER = "user_encoder"  #: the trained query encoder and its tokenizer (save_pretrained)
EXPORT_OPTIONS = "persona_plug.json"  #: pooling, instruction and the rest (plain JSON)


def save_persona_plug(plug: PersonaPlug, folder: str | Path, state_dict: dict | None = None,
                      options: dict | None = None) -> None:
    """Write what predicting with ``plug`` needs outside Lightning into ``folder`` (an HF export's):
    ``persona_plug.safetensors`` (I, Proj_I, Proj, soft_norm), ``user_encoder/`` (the trained query
    encoder and its tokenizer, ``save_pretrained``) and ``persona_plug.json`` (pooling, instruction,
    number of soft tokens, widths, and ``options``). ``state_dict``: PPlug's weights to write (keys
    as ``plug.state_dict()``'s; default the live ones). No pickle anywhere: :func:`load_persona_plug`
    reads it back."""
    from safetensors.torch import save_file

    folder = Path(folder)
    state = plug.state_dict() if state_dict is None else state_dict
    encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    own = {k: v.detach().cpu().contiguous() for k, v in state.items() if not k.startswith("encoder.")}
    save_file(own, str(folder / EXPORT_WEIGHTS))
    plug.encoder.save_pretrained(folder / EXPORT_ENCODER, state_dict=encoder_state)
    if plug.tokenizer is not None:
        plug.tokenizer.save_pretrained(folder / EXPORT_ENCODER)
    meta = {"pooling": plug.pooling, "instruction": plug.instruction_text, "n_soft": N_SOFT,
            "d_enc": int(plug.instruction.shape[0]), "d_model": int(plug.proj[-1].out_features),
            **(options or {})}
    (folder / EXPORT_OPTIONS).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def load_persona_plug(folder: str | Path, lm_input_embeddings: nn.Embedding) -> PersonaPlug:
    """The :class:`PersonaPlug` that :func:`save_persona_plug` wrote into ``folder`` (safetensors and
    ``from_pretrained`` only); a one-line LaMPError if a file is missing or does not fit."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / EXPORT_OPTIONS).read_text())
        weights = load_file(str(folder / EXPORT_WEIGHTS))
    except (OSError, ValueError) as err:
        raise LaMPError(f"{folder}: not a PersonaPlug export ({type(err).__name__}: {err})") from None
    plug = PersonaPlug(str(folder / EXPORT_ENCODER), lm_input_embeddings, pooling=meta.get("pooling", "cls"),
                       instruction=meta.get("instruction", BGE_INSTRUCTION))
    missing, unexpected = plug.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise LaMPError(f"{folder / EXPORT_WEIGHTS}: does not fit PersonaPlug (missing {missing}, "
                        f"unexpected {unexpected})")
    return plug
