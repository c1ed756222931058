"""The model's own tokenizer (transformers reads tokenizer.json and its config offline), for
`generate`: text to token ids (optionally through the model's chat template) and back."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from moa_edge.errors import MoaEdgeError

class Tokenizer:
    def __init__(self, path: Path):
        folder = path.parent if path.is_file() else path
        if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
            raise MoaEdgeError(f"{path}: no tokenizer there (tokenizer.json); give --tokenizer FOLDER, or --prompt-ids")
        try:
            self._tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # transformers' own message names what is missing or malformed
            raise MoaEdgeError(f"{path}: cannot load the tokenizer ({str(exc).strip().splitlines()[0]})") from None

    def encode(self, text: str, chat: bool = False) -> list[int]:
        if chat:
            if not self._tok.chat_template:
                raise MoaEdgeError("--chat: this tokenizer has no chat template")
            ids = self._tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=True, return_dict=True)["input_ids"]
            return list(ids)
        return list(self._tok(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    @property
    def stop_ids(self) -> list[int]:
        """The end-of-sequence id(s) the model was trained to stop at."""
        eos = self._tok.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
